"""``python -m bench.pg_scale`` on a small index: it fills, times, reports and cleans up.

No timing assertions (the machine is shared); the numbers must only be sane.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.conftest import ROOT, clean_environ

EXPECTED_CASES = {
    "study list (no filter, OHIF)",
    "PatientName=smi*",
    "PatientName=smith fuzzy",
    "StudyDate one month",
    "ModalitiesInStudy=CT",
    "PatientID exact",
    "AccessionNumber exact",
    "StudyDate one year + ModalitiesInStudy=MR",
    "study list page 51 (offset 5050)",
}


async def _database_exists(name: str) -> bool:
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


def test_pg_scale_small_run_reports_every_query(tmp_path: Path) -> None:
    out = tmp_path / "pg_scale.json"
    argv = ["--instances", "2000", "--runs", "5", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "bench.pg_scale", *argv],
        cwd=ROOT,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    header = "| query | path | min ms | p50 ms | p95 ms | CPU ms/query | matches | vs 50 ms p95 |"
    assert header in run.stdout

    results = json.loads(out.read_text())
    # 2,000 instances = 20 studies x 4 series x 25 instances, 10 patients.
    assert results["counts"] == {
        "patients": 10,
        "studies": 20,
        "series": 80,
        "instances": 2000,
        "fill_seconds": results["counts"]["fill_seconds"],
    }
    for path in ("match_sql", "page_sql", "in_process", "http"):
        timings = results[path]
        assert set(timings) == EXPECTED_CASES
        for case, s in timings.items():
            assert s["runs"] == 5, case
            assert 0 < s["min_ms"] <= s["p50_ms"] <= s["p95_ms"] <= s["max_ms"], (case, s)
            assert s["met"] == (s["p95_ms"] <= 50.0), (case, s)
            assert f"| {case} | {path} |" in run.stdout
        # Every study fits one page; the exact keys name one study each.
        assert timings["study list (no filter, OHIF)"]["matches"] == 20
        assert timings["PatientID exact"]["matches"] >= 1
        assert timings["AccessionNumber exact"]["matches"] == 1
        assert timings["StudyDate one month"]["matches"] <= 20
        assert timings["study list page 51 (offset 5050)"]["matches"] == 0  # past the end
        assert s["cpu_ms"] >= 0
    assert set(results["explain"]) <= EXPECTED_CASES
    for plan in results["explain"].values():
        assert "Execution Time" in plan
    # The database is dropped unless --keep.
    assert results["database"].startswith("arca_scale_")
    assert not asyncio.run(_database_exists(results["database"]))
