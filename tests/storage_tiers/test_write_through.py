"""Write-through (``storage.write_through``): every instance reaches the cold tier, verified,
before its ingest returns; rows name the cold copy; the hot tier is this node's cache, which
reads fill and :meth:`TierManager.evict_cache` trims, and which never changes the shared rows.
Real moto S3 and the real index (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.settings import StorageSettings
from storage.archive import Archive, open_archive
from storage.errors import NotFound, StoreUnavailable
from storage.model import Tier
from storage.query import Query, QueryLevel
from tests.storage_tiers.conftest import MotoS3
from tests.storage_tiers.helpers import (
    StoredStudy,
    assert_readable,
    copies,
    ingest_series,
    tiers_of,
)


@pytest.fixture
def wt_settings(tier_settings: StorageSettings) -> StorageSettings:
    return dataclasses.replace(tier_settings, write_through=True)


@pytest.fixture
async def archive(wt_settings: StorageSettings) -> AsyncIterator[Archive]:
    opened = await open_archive(wt_settings)
    try:
        yield opened
    finally:
        await opened.close()


def _hot_files(archive: Archive, study_uid: str) -> list[Path]:
    assert archive.tiers is not None
    return sorted(p for p in (archive.tiers.hot.root / study_uid).rglob("*") if p.is_file())


async def _drop_cache(archive: Archive, study: StoredStudy) -> None:
    """What another node sees: the rows and the cold copies, none of our hot files."""
    for path in _hot_files(archive, study.study_uid):
        path.unlink()


async def test_ingest_stores_in_the_cold_tier_before_it_returns(
    archive: Archive, tmp_path: Path
) -> None:
    study = await ingest_series(archive, 4, tmp_path / "in")
    assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.COLD}
    assert set((await copies(archive, study.study_uid)).values()) == {(True, True)}
    status = await archive.tier_status()
    assert (status.hot.instances, status.cold.instances, status.cold.bytes) == (
        0,
        4,
        study.total,
    )
    assert status.cache is not None
    assert (status.cache.instances, status.cache.bytes) == (4, study.total)
    assert "4 files" in status.describe()
    report = await archive.verify()
    assert report.ok and report.orphans == [] and report.instances_checked == 4
    await assert_readable(archive, study)


async def test_verify_removes_a_cached_copy_that_fails_its_sha256(
    archive: Archive, tmp_path: Path
) -> None:
    study = await ingest_series(archive, 2, tmp_path / "in")
    bad = _hot_files(archive, study.study_uid)[0]
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    report = await archive.verify()
    assert report.ok and len(report.bad_cache) == 1
    assert not bad.exists()
    await assert_readable(archive, study)  # from the cold copy
    assert (await archive.verify()).bad_cache == []


async def test_cold_tier_down_refuses_the_instance_and_stores_nothing(
    archive: Archive, moto_s3: MotoS3, tmp_path: Path
) -> None:
    moto_s3.stop()
    try:
        with pytest.raises(StoreUnavailable):
            await ingest_series(archive, 1, tmp_path / "down")
        assert (await archive.search(Query(QueryLevel.STUDY))).matches == []
        assert archive.tiers is not None
        assert [p for p in archive.tiers.hot.root.rglob("*") if p.is_file()] == []
    finally:
        moto_s3.start()
    study = await ingest_series(archive, 2, tmp_path / "up")
    await assert_readable(archive, study)
    report = await archive.verify()
    assert report.ok and report.orphans == []


async def test_a_read_without_a_cached_copy_caches_it_and_rows_stay_cold(
    archive: Archive, tmp_path: Path
) -> None:
    study = await ingest_series(archive, 3, tmp_path / "in")
    await _drop_cache(archive, study)
    locations = await archive.locate(study.study_uid)
    reader = await archive.open_blob(locations[0])  # a client's read: recall hook on
    try:
        await reader.read_all()
    finally:
        await reader.close()
    assert archive.prefetcher is not None
    await archive.prefetcher.wait_idle(timeout=30)
    # The whole study is cached here now; the shared rows and cold copies did not change.
    assert set((await copies(archive, study.study_uid)).values()) == {(True, True)}
    assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.COLD}
    # and a cached copy serves the next read as a local file
    reader = await archive.open_blob(locations[1])
    try:
        assert reader.local_path is not None
    finally:
        await reader.close()
    await assert_readable(archive, study)


async def test_migrate_to_hot_fills_the_cache_without_flipping(
    archive: Archive, tmp_path: Path
) -> None:
    study = await ingest_series(archive, 3, tmp_path / "in")
    await _drop_cache(archive, study)
    result = await archive.migrate_study(study.study_uid, Tier.HOT)
    assert (result.moved, result.failed) == (3, ())
    assert set((await copies(archive, study.study_uid)).values()) == {(True, True)}
    assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.COLD}


async def test_sweep_keeps_the_cache(archive: Archive, tmp_path: Path) -> None:
    study = await ingest_series(archive, 2, tmp_path / "in")
    assert archive.tiers is not None
    report = await archive.tiers.sweep(grace_seconds=0)
    assert report.hot_copies_removed == []
    assert set((await copies(archive, study.study_uid)).values()) == {(True, True)}


async def test_delete_removes_the_cold_copy_and_the_cached_one(
    archive: Archive, tmp_path: Path
) -> None:
    study = await ingest_series(archive, 2, tmp_path / "in")
    keys = [loc.blob_key for loc in await archive.locate(study.study_uid)]
    assert await archive.delete(study.study_uid) == 2
    assert archive.cold is not None
    for key in keys:
        assert not await archive.cold.exists(key)
        assert not await archive.hot.exists(key)
    with pytest.raises(NotFound):
        await archive.locate(study.study_uid)


async def test_eviction_drops_cached_copies_never_a_hot_rows_file(
    tier_settings: StorageSettings, wt_settings: StorageSettings, tmp_path: Path
) -> None:
    # A study stored before write-through was turned on: its rows name this disk.
    plain = await open_archive(tier_settings)
    try:
        legacy = await ingest_series(plain, 2, tmp_path / "legacy")
    finally:
        await plain.close()
    archive = await open_archive(wt_settings)
    try:
        assert archive.tiers is not None
        cached = await ingest_series(archive, 3, tmp_path / "cached")
        assert set((await tiers_of(archive, legacy.study_uid)).values()) == {Tier.HOT}
        # Nothing is old yet: nothing goes.
        report = await archive.tiers.evict_cache()
        assert (report.copies_removed, report.stale_removed) == (0, 0)
        # Past migrate_after_days without a local read: the cache goes, the hot row stays.
        later = datetime.now(UTC) + timedelta(days=wt_settings.migrate_after_days + 1)
        report = await archive.tiers.evict_cache(later)
        assert (report.copies_removed, report.bytes_freed) == (3, cached.total)
        assert _hot_files(archive, cached.study_uid) == []
        assert len(_hot_files(archive, legacy.study_uid)) == 2
        await assert_readable(archive, cached)
        await assert_readable(archive, legacy)
        assert (await archive.verify()).ok
    finally:
        await archive.close()


async def test_eviction_over_the_watermark_drops_least_recently_read_first(
    wt_settings: StorageSettings, tmp_path: Path
) -> None:
    probe = await open_archive(wt_settings)
    try:
        first = await ingest_series(probe, 3, tmp_path / "a")
        second = await ingest_series(probe, 3, tmp_path / "b")
    finally:
        await probe.close()
    # Room for a bit more than one study: the older read goes, the newer stays.
    settings = dataclasses.replace(wt_settings, hot_high_watermark_bytes=int(first.total * 1.5))
    archive = await open_archive(settings)
    try:
        assert archive.tiers is not None
        old = time.time() - 3600
        folder = archive.tiers.hot.root / first.study_uid
        for path in [*folder.rglob("*"), folder]:  # files, series folder, then the study's
            os.utime(path, (old, old))
        report = await archive.tiers.evict_cache()
        assert report.copies_removed == 3
        assert _hot_files(archive, first.study_uid) == []
        assert len(_hot_files(archive, second.study_uid)) == 3
        await assert_readable(archive, first)
    finally:
        await archive.close()


async def test_eviction_removes_stale_files_no_row_names(archive: Archive, tmp_path: Path) -> None:
    assert archive.tiers is not None
    study = await ingest_series(archive, 1, tmp_path / "in")
    root = archive.tiers.hot.root
    stale = root / "1.2.3.4" / "5.6" / "7.8-0123456789abcdef.dcm"  # deleted through another node
    fresh = root / "1.2.3.4" / "5.6" / "7.9-0123456789abcdef.dcm"  # a commit in progress
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    fresh.write_bytes(b"new")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    report = await archive.tiers.evict_cache(grace_seconds=900)
    assert (report.stale_removed, report.copies_removed) == (1, 0)
    assert not stale.exists() and fresh.exists()
    assert len(_hot_files(archive, study.study_uid)) == 1


async def test_write_through_without_a_cold_tier_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a cold tier"):
        await open_archive(StorageSettings(data_dir=tmp_path, write_through=True))
