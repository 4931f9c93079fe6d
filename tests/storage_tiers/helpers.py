"""Helpers for the tier tests: ingest a CT series, check where each blob lives."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from storage.archive import Archive
from storage.model import Tier
from tests.data import ct_series


@dataclass(frozen=True)
class StoredStudy:
    study_uid: str
    series_uid: str
    sha256: dict[str, str]
    """SOPInstanceUID -> SHA-256 of the bytes ingested."""
    size: int
    """Bytes of the last instance (slices differ by a few bytes: UIDs vary in length)."""
    total: int
    """Bytes of all instances."""


async def ingest_series(archive: Archive, n: int, tmp: Path) -> StoredStudy:
    series = ct_series(n, tmp)
    sha: dict[str, str] = {}
    size = total = 0
    for path, uid in zip(series.paths, series.sop_instance_uids, strict=True):
        sha[uid] = hashlib.sha256(path.read_bytes()).hexdigest()
        outcome = await archive.ingest(path)
        assert outcome.sha256 == sha[uid]
        size = outcome.size
        total += size
    return StoredStudy(series.study_uid, series.series_uid, sha, size, total)


async def tiers_of(archive: Archive, study_uid: str) -> dict[str, Tier]:
    return {loc.sop_instance_uid: loc.tier for loc in await archive.locate(study_uid)}


async def copies(archive: Archive, study_uid: str) -> dict[str, tuple[bool, bool]]:
    """SOPInstanceUID -> (hot copy exists, cold copy exists)."""
    assert archive.cold is not None
    out: dict[str, tuple[bool, bool]] = {}
    for loc in await archive.locate(study_uid):
        out[loc.sop_instance_uid] = (
            await archive.hot.exists(loc.blob_key),
            await archive.cold.exists(loc.blob_key),
        )
    return out


async def assert_readable(archive: Archive, study: StoredStudy) -> None:
    """Every instance (no more, no fewer) reads through the Archive with its ingest SHA-256."""
    assert archive.tiers is not None
    locations = await archive.locate(study.study_uid)
    assert sorted(loc.sop_instance_uid for loc in locations) == sorted(study.sha256)
    hook, archive.tiers.cold_read_hook = archive.tiers.cold_read_hook, None
    try:
        for loc in locations:
            reader = await archive.open_blob(loc)
            try:
                data = await reader.read_all()
            finally:
                await reader.close()
            assert hashlib.sha256(data).hexdigest() == study.sha256[loc.sop_instance_uid]
    finally:
        archive.tiers.cold_read_hook = hook


async def assert_intact(archive: Archive, study: StoredStudy) -> None:
    """Every instance readable through the Archive with its ingest SHA-256, and exactly one
    copy of each blob, on the tier its index row names."""
    assert archive.tiers is not None
    locations = await archive.locate(study.study_uid)
    assert sorted(loc.sop_instance_uid for loc in locations) == sorted(study.sha256)
    placement = await copies(archive, study.study_uid)
    # Read without the recall-on-cold-read hook, so checking does not move anything.
    hook, archive.tiers.cold_read_hook = archive.tiers.cold_read_hook, None
    try:
        for loc in locations:
            reader = await archive.open_blob(loc)
            try:
                data = await reader.read_all()
            finally:
                await reader.close()
            assert hashlib.sha256(data).hexdigest() == study.sha256[loc.sop_instance_uid]
    finally:
        archive.tiers.cold_read_hook = hook
        hot, cold = placement[loc.sop_instance_uid]
        assert (hot, cold) == (loc.tier is Tier.HOT, loc.tier is Tier.COLD), (
            loc.sop_instance_uid,
            loc.tier,
            hot,
            cold,
        )
