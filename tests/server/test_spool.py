"""Stale spool entries (left by a killed process) are removed at start-up; fresh ones are not."""

from __future__ import annotations

import os
import time
from pathlib import Path

from server.spool import purge_stale


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_purge_removes_only_stale_entries(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    old_dir = spool / "stow-1234"
    old_dir.mkdir(parents=True)
    old_part = old_dir / "part-0001.dcm"
    old_part.write_bytes(b"x")
    fresh_dir = spool / "import-5678"
    fresh_dir.mkdir()
    fresh = fresh_dir / "00000001.dcm"
    fresh.write_bytes(b"y")
    _age(old_part, 7 * 3600)
    _age(old_dir, 7 * 3600)

    assert purge_stale(spool) == 1
    assert not old_dir.exists()
    assert fresh.exists()
    assert spool.is_dir()
    assert purge_stale(tmp_path / "missing") == 0
