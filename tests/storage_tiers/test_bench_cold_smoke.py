"""The benchmark's cold scenario in a tiny mode: it runs end to end and records its figures.

``python -m bench.run --only cold`` with 5 slices and one repetition: its own moto process and
``arca serve --cold-store``, studies loaded by STOW-RS, moved cold with ``arca tier
migrate``, read back, recalled. Checks that both figures were measured (no failures), that
the target line says MET or MISSED, and that moto's ceiling was noted; the figures' values
are the benchmark's business, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

from tests.bench.runner import run_bench


def test_cold_scenario_tiny_run_measures_both_figures(tmp_path: Path) -> None:
    result, latest = run_bench(
        tmp_path,
        "--only",
        "cold",
        "--instances",
        "5",
        "--repeat",
        "1",
        "--metadata-instances",
        "2",
        timeout=300,
    )
    for key in ("cold_viewer", "cold_series"):
        arca = result["figures"][key]["servers"]["arca"]
        assert arca["errors"] == [], f"{key}: {arca['errors']}"
        assert arca["median"] is not None and arca["median"] > 0, key
        sample = arca["samples"][0]
        assert sample["extra"]["mb_per_s"] > 0 and "moto_load" in sample["extra"]
    orthanc = result["figures"]["cold_viewer"]["servers"].get("orthanc", {})
    assert not orthanc.get("samples"), "Orthanc has no cold tier: arca only"
    assert result["figures"]["cold_viewer"]["status"].split(" ")[0] in ("MET", "MISSED")
    notes = result["meta"]["notes"]
    assert any(n.startswith("moto alone") for n in notes), notes
    assert not any("migration incomplete" in n or "not recalled" in n for n in notes), notes
    table = (latest / "results.md").read_text()
    assert "Cold tier: study metadata, then series" in table
    # Nothing of the run is left behind: its moto, arca and data folders are gone.
    assert not any((tmp_path / "work").glob("cold-*"))
