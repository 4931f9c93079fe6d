"""kill -9 during migration and recall: after a restart and the sweep, nothing is lost, nothing
is duplicated, and every instance reads back with its ingest SHA-256."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import StorageSettings
from storage.archive import open_archive
from storage.model import Tier
from tests.conftest import ROOT
from tests.storage_tiers.helpers import (
    assert_intact,
    assert_readable,
    copies,
    ingest_series,
    tiers_of,
)

POINTS = ["after_copy", "before_flip", "after_flip", "mid_delete"]


def _settings_json(settings: StorageSettings) -> str:
    raw = dataclasses.asdict(settings)
    raw["data_dir"] = str(settings.data_dir)
    raw["overwrite_policy"] = settings.overwrite_policy
    return json.dumps({k: v for k, v in raw.items() if k != "overwrite_policy"})


# Each case starts a Python process (seconds on a loaded 2-core machine): every point for
# migration on SQLite; recall and PostgreSQL at the points around the flip.
CASES = [
    *[("sqlite", point, Tier.COLD) for point in POINTS],
    ("sqlite", "after_flip", Tier.HOT),
    ("sqlite", "mid_delete", Tier.HOT),
    ("postgresql", "after_flip", Tier.COLD),
    ("postgresql", "after_flip", Tier.HOT),
]


@pytest.mark.parametrize(
    ("backend", "point", "target"),
    CASES,
    ids=[f"{b}-{p}-{'migrate' if t is Tier.COLD else 'recall'}" for b, p, t in CASES],
)
async def test_sigkill_mid_migration_then_sweep(
    tier_settings: StorageSettings, tmp_path: Path, point: str, target: Tier, backend: str
) -> None:
    archive = await open_archive(tier_settings)
    try:
        study = await ingest_series(archive, 4, tmp_path / "in")
        if target is Tier.HOT:
            await archive.migrate_study(study.study_uid, Tier.COLD)
    finally:
        await archive.close()

    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.storage_tiers.crash_child",
            _settings_json(tier_settings),
            study.study_uid,
            target.value,
            point,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr

    archive = await open_archive(tier_settings)
    try:
        assert archive.tiers is not None
        # Straight after the crash, before any cleanup, every instance still reads right.
        before = await copies(archive, study.study_uid)
        assert all(hot or cold for hot, cold in before.values())
        await assert_readable(archive, study)
        report = await archive.tiers.sweep(grace_seconds=0)
        if point == "after_flip":
            removed = report.hot_copies_removed + report.cold_copies_removed
            assert len(removed) == 4, report
        await assert_intact(archive, study)
        # Running the migration again finishes the job.
        await archive.migrate_study(study.study_uid, target)
        assert set((await tiers_of(archive, study.study_uid)).values()) == {target}
        await assert_intact(archive, study)
        again = await archive.tiers.sweep(grace_seconds=0)
        assert not (again.hot_copies_removed or again.cold_copies_removed)
    finally:
        await archive.close()
