"""Helpers for the transcoding tests: sample files, reading, dciodvfy."""

from __future__ import annotations

import io
import subprocess
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

DCIODVFY = "/usr/bin/dciodvfy"


def sample_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"test file {name} is not installed")
    return Path(str(path))


def read(data: bytes | Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(data, bytes):
            return pydicom.dcmread(io.BytesIO(data))
        return pydicom.dcmread(data)


def dciodvfy_errors(path: Path) -> set[str]:
    """The ``Error`` lines dciodvfy reports for a file (it writes them to stderr)."""
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {line.strip() for line in lines if line.startswith("Error")}
