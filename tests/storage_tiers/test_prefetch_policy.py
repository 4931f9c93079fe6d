"""Prefetch (bounded, deduplicated, effective) and the placement policy (age, watermark)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from config.settings import StorageSettings
from storage.archive import Archive, open_archive
from storage.index.schema import studies
from storage.model import Tier
from storage.prefetch import Prefetcher
from tests.storage_tiers.helpers import assert_intact, ingest_series, tiers_of


async def _set_last_access(archive: Archive, study_uid: str, days_ago: float) -> None:
    stamp = (datetime.now(UTC) - timedelta(days=days_ago)).isoformat(timespec="microseconds")
    async with archive._write.begin() as conn:
        await conn.execute(
            update(studies).where(studies.c.study_uid == study_uid).values(last_access_at=stamp)
        )


async def test_prefetch_is_bounded_and_makes_reads_hot(
    tiered_archive: Archive, tmp_path: Path
) -> None:
    archive = tiered_archive
    assert archive.tiers is not None
    study = await ingest_series(archive, 8, tmp_path / "in")
    await archive.migrate_study(study.study_uid, Tier.COLD)
    # Slices differ by a few bytes (UID lengths): budget exactly the first five.
    budget = sum(loc.size for loc in (await archive.locate(study.study_uid))[:5])
    prefetcher = Prefetcher(archive.tiers, max_concurrency=2, max_bytes=budget)
    try:
        assert prefetcher.request(study.study_uid)
        assert not prefetcher.request(study.study_uid), "deduplicated while queued"
        await prefetcher.wait_idle(timeout=60)
        assert not prefetcher.request(study.study_uid), "recently prefetched"
        stats = prefetcher.stats
        assert 1 <= stats.peak_transfers <= 2
        assert stats.bytes_recalled == budget
        assert stats.bytes_recalled + stats.bytes_warmed <= budget
        assert stats.requests_deduplicated == 2
        tiers = await tiers_of(archive, study.study_uid)
        assert sum(t is Tier.HOT for t in tiers.values()) == 5
        # Prefetched instances now read from the hot tier (local files), in retrieve order.
        locations = await archive.locate(study.study_uid)
        assert [loc.tier for loc in locations] == [Tier.HOT] * 5 + [Tier.COLD] * 3
        for loc in locations[:5]:
            reader = await archive.open_blob(loc)
            assert reader.local_path is not None
            await reader.close()
        await assert_intact(archive, study)
    finally:
        await prefetcher.close()


async def test_metadata_request_prefetches_the_study(
    tiered_archive: Archive, tmp_path: Path
) -> None:
    archive = tiered_archive
    assert archive.prefetcher is not None
    study = await ingest_series(archive, 4, tmp_path / "in")
    await archive.migrate_study(study.study_uid, Tier.COLD)
    assert len(await archive.instance_metadata(study.study_uid)) == 4
    await archive.prefetcher.wait_idle(timeout=60)
    assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.HOT}
    assert archive.prefetcher.stats.peak_transfers <= 2  # tier_settings: concurrency 2


async def test_live_cold_read_of_another_study_throttles_prefetch_to_one_transfer(
    tiered_archive: Archive, tmp_path: Path
) -> None:
    archive = tiered_archive
    assert archive.tiers is not None
    viewed = await ingest_series(archive, 2, tmp_path / "viewed")
    other = await ingest_series(archive, 6, tmp_path / "other")
    for study in (viewed, other):
        await archive.migrate_study(study.study_uid, Tier.COLD)
    prefetcher = Prefetcher(archive.tiers, max_concurrency=4, max_bytes=10**9)
    archive.tiers.cold_read_hook = None
    live = prefetcher.track_live(
        await archive.open_blob((await archive.locate(viewed.study_uid))[0]), viewed.study_uid
    )
    try:
        prefetcher.request(other.study_uid)
        await prefetcher.wait_idle(timeout=60)
        assert prefetcher.stats.peak_transfers == 1
    finally:
        await live.close()
        await prefetcher.close()


async def test_live_cold_read_of_the_same_study_does_not_throttle_its_prefetch(
    tiered_archive: Archive, tmp_path: Path
) -> None:
    """The viewer's own reads and the recall share their downloads, so the recall running
    ahead at full concurrency is what the viewer wants."""
    archive = tiered_archive
    assert archive.tiers is not None
    study = await ingest_series(archive, 12, tmp_path / "in")
    await archive.migrate_study(study.study_uid, Tier.COLD)
    prefetcher = Prefetcher(archive.tiers, max_concurrency=4, max_bytes=10**9)
    archive.tiers.cold_read_hook = None
    live = prefetcher.track_live(
        await archive.open_blob((await archive.locate(study.study_uid))[0]), study.study_uid
    )
    try:
        prefetcher.request(study.study_uid)
        await prefetcher.wait_idle(timeout=60)
        assert 1 < prefetcher.stats.peak_transfers <= 4
        assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.HOT}
    finally:
        await live.close()
        await prefetcher.close()


async def test_policy_moves_old_studies_and_lru_over_the_watermark(
    tier_settings: StorageSettings, tmp_path: Path
) -> None:
    probe = await open_archive(tier_settings)
    try:
        old = await ingest_series(probe, 2, tmp_path / "old")
        lru = await ingest_series(probe, 2, tmp_path / "lru")
        recent = await ingest_series(probe, 2, tmp_path / "recent")
        await _set_last_access(probe, old.study_uid, 40)
        await _set_last_access(probe, lru.study_uid, 10)
        await _set_last_access(probe, recent.study_uid, 1)
        size = old.size
    finally:
        await probe.close()

    # Age alone (30 days): only the old study is due.
    archive = await open_archive(tier_settings)
    try:
        assert archive.tiers is not None
        assert await archive.tiers.policy_candidates() == [old.study_uid]
    finally:
        await archive.close()

    # Hot tier over its watermark (6 instances > 4): studies move cold, least recently used
    # first, until the hot tier is under 90% of the watermark (3.6 instances).
    watermark = dataclasses.replace(tier_settings, hot_high_watermark_bytes=4 * size)
    archive = await open_archive(watermark)
    try:
        assert archive.tiers is not None
        assert await archive.tiers.policy_candidates() == [old.study_uid, lru.study_uid]
        results = await archive.tiers.run_policy()
        assert [(r.study_uid, r.moved) for r in results] == [
            (old.study_uid, 2),
            (lru.study_uid, 2),
        ]
        status = await archive.tier_status()
        assert (status.hot.instances, status.cold.instances) == (2, 4)
        assert await archive.tiers.policy_candidates() == []
        for study in (old, lru, recent):
            await assert_intact(archive, study)
    finally:
        await archive.close()
