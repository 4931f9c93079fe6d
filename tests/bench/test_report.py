"""The benchmark report's verdicts: a missed target says by how much, in figures that differ
from the target as printed (a median of 99.7 against ≥100 must not read "100 < 100")."""

from __future__ import annotations

from bench.report import ARCA, ORTHANC, Figure, Sample, figures


def _with(key: str, arca: float, orthanc: float, **extra: float) -> Figure:
    f = figures()[key]
    f.cell(ARCA).samples.append(Sample(arca, 1.0, 1.0, 0.1, dict(extra)))
    f.cell(ORTHANC).samples.append(Sample(orthanc, 1.0, 1.0, 0.1))
    return f


def test_a_near_miss_prints_the_decimals_that_make_it_a_miss() -> None:
    status = _with("remote_j2k", 99.7, 60.0, link_utilisation=0.8996).status()
    assert status == "MISSED (99.7 < 100 images/s; link 89.96% < 90%)"


def test_a_ratio_just_short_of_its_factor_is_not_rounded_up_to_it() -> None:
    assert _with("stow", 599.9, 200.0).status() == "MISSED (2.999× < 3×)"
    assert _with("stow", 500.0, 200.0).status() == "MISSED (2.50× < 3×)"


def test_a_latency_target_missed_by_a_hair_says_so() -> None:
    status = _with("study_metadata", 50.04, 1000.0).status()
    assert status == "MISSED (50.04 > 50)"


def test_met_targets_give_no_reason() -> None:
    assert _with("stow", 700.0, 200.0).status() == "MET"
    assert _with("remote_j2k", 300.0, 60.0, link_utilisation=0.95).status() == "MET"
