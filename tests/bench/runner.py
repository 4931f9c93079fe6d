"""Run ``python -m bench.run`` in a tiny mode into a test's folder; its results.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT


def run_bench(tmp_path: Path, *args: str, timeout: float) -> tuple[dict[str, Any], Path]:
    """(results.json, the results/latest folder) of a run with ``args``; fails on exit != 0."""
    out, work = tmp_path / "results", tmp_path / "work"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", *args, "--out", str(out), "--work", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    latest = out / "latest"
    return json.loads((latest / "results.json").read_text()), latest
