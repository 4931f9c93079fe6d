"""Migration between the hot and cold tiers through the real Archive (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import boto3
import pytest

from storage.archive import Archive
from storage.errors import CorruptBlob, NotFound, StoreUnavailable
from storage.model import Tier
from tests.storage_tiers.conftest import MotoS3
from tests.storage_tiers.helpers import assert_intact, copies, ingest_series, tiers_of


async def test_hot_cold_hot_keeps_bytes(tiered_archive: Archive, tmp_path: Path) -> None:
    archive = tiered_archive
    study = await ingest_series(archive, 5, tmp_path / "in")
    assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.HOT}
    status = await archive.tier_status()
    assert (status.hot.instances, status.cold.instances) == (5, 0)
    assert status.hot.bytes == study.total

    result = await archive.migrate_study(study.study_uid, "cold")
    assert (result.moved, result.bytes, result.failed) == (5, study.total, ())
    assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.COLD}
    assert set((await copies(archive, study.study_uid)).values()) == {(False, True)}
    await assert_intact(archive, study)
    status = await archive.tier_status()
    assert (status.hot.instances, status.cold.instances, status.cold.bytes) == (
        0,
        5,
        study.total,
    )
    again = await archive.migrate_study(study.study_uid, Tier.COLD)
    assert (again.moved, again.already) == (0, 5)

    back = await archive.migrate_study(study.study_uid, Tier.HOT)
    assert (back.moved, back.failed) == (5, ())
    assert set((await copies(archive, study.study_uid)).values()) == {(True, False)}
    await assert_intact(archive, study)
    report = await archive.verify(study.study_uid)
    assert report.ok and report.instances_checked == 5


async def test_unknown_study_and_bad_tier(tiered_archive: Archive) -> None:
    with pytest.raises(NotFound):
        await tiered_archive.migrate_study("1.2.3.999", Tier.COLD)
    with pytest.raises(ValueError):
        await tiered_archive.migrate_study("1.2.3.999", "lukewarm")


async def test_hot_copy_deleted_only_after_cold_copy_verified_and_row_flipped(
    tiered_archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tiered_archive
    assert archive.cold is not None
    study = await ingest_series(archive, 4, tmp_path / "in")
    hot_delete = archive.hot.delete
    seen: list[tuple[str, bool, Tier]] = []

    async def watched_delete(key: str) -> None:
        # At the moment the hot copy goes, the cold copy must hash right and the row be cold.
        assert archive.cold is not None
        good = await archive.cold.sha256(key)
        sop = next(loc for loc in await archive.locate(study.study_uid) if loc.blob_key == key)
        seen.append((key, good == sop.sha256, sop.tier))
        await hot_delete(key)

    monkeypatch.setattr(archive.hot, "delete", watched_delete)
    await archive.migrate_study(study.study_uid, Tier.COLD)
    assert len(seen) == 4 and all(ok and tier is Tier.COLD for _, ok, tier in seen)


async def test_bad_cold_copy_keeps_the_hot_copy(
    tiered_archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tiered_archive
    assert archive.cold is not None
    study = await ingest_series(archive, 3, tmp_path / "in")
    put = archive.cold.put_file
    victim = sorted(study.sha256)[0]

    async def corrupting_put(key: str, source: Path) -> None:
        # The object store silently stores other bytes for one object.
        if victim in key:
            assert archive.cold is not None
            await archive.cold.put_bytes(key, b"not the instance")
        else:
            await put(key, source)

    monkeypatch.setattr(archive.cold, "put_file", corrupting_put)
    result = await archive.migrate_study(study.study_uid, Tier.COLD)
    assert result.failed == (victim,) and result.moved == 2
    tiers = await tiers_of(archive, study.study_uid)
    assert tiers[victim] is Tier.HOT
    assert (await copies(archive, study.study_uid))[victim] == (True, False)
    await assert_intact(archive, study)


async def test_corrupt_cold_blob_is_never_served(
    tiered_archive: Archive, tmp_path: Path, moto_s3: MotoS3, bucket: str
) -> None:
    archive = tiered_archive
    assert archive.tiers is not None
    study = await ingest_series(archive, 2, tmp_path / "in")
    await archive.migrate_study(study.study_uid, Tier.COLD)
    locations = await archive.locate(study.study_uid)
    bad = locations[0]
    # Flip one byte of the stored object behind the archive's back.
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint, region_name="us-east-1")
    key = f"cold/{bad.blob_key}"
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    archive.tiers.cold_read_hook = None  # no recall: look at the read alone
    # A cold blob of a few MB is fetched whole and checked when opened.
    with pytest.raises(CorruptBlob):
        await archive.open_blob(bad)
    # The streaming reader (blobs over FETCH_WHOLE_BYTES) checks before its last byte.
    assert archive.cold is not None
    reader = await archive.cold.open(bad.blob_key, expected_sha256=bad.sha256)
    with pytest.raises(CorruptBlob):
        await reader.read_all()
    with pytest.raises(CorruptBlob):
        await reader.read_range(0, 132)
    with pytest.raises(CorruptBlob):
        async for _ in reader.iter_chunks():
            pass
    await reader.close()
    report = await archive.verify(study.study_uid)
    assert report.corrupt == [bad.sop_instance_uid]
    # Recalling refuses the corrupt blob too: it stays cold, the good one comes hot.
    result = await archive.migrate_study(study.study_uid, Tier.HOT)
    assert result.failed == (bad.sop_instance_uid,) and result.moved == 1
    assert not await archive.hot.exists(bad.blob_key)


async def test_reading_a_cold_study_streams_it_and_recalls_it(
    tiered_archive: Archive, tmp_path: Path
) -> None:
    archive = tiered_archive
    assert archive.prefetcher is not None
    study = await ingest_series(archive, 4, tmp_path / "in")
    await archive.migrate_study(study.study_uid, Tier.COLD)
    first = (await archive.locate(study.study_uid))[0]
    reader = await archive.open_blob(first)
    assert reader.local_path is None, "served from the cold tier"
    data = b"".join([chunk async for chunk in reader.iter_chunks(256 * 1024)])
    await reader.close()
    assert hashlib.sha256(data).hexdigest() == study.sha256[first.sop_instance_uid]
    await archive.prefetcher.wait_idle(timeout=60)
    assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.HOT}
    await assert_intact(archive, study)
    # A plan made before the recall still opens (the blob moved; open_blob follows it).
    reader = await archive.open_blob(first)
    assert reader.local_path is not None
    await reader.close()


async def test_store_down_cold_reads_fail_hot_reads_work_migration_resumes(
    tiered_archive: Archive, tmp_path: Path, moto_s3: MotoS3
) -> None:
    archive = tiered_archive
    assert archive.tiers is not None
    cold_study = await ingest_series(archive, 2, tmp_path / "a")
    hot_study = await ingest_series(archive, 3, tmp_path / "b")
    await archive.migrate_study(cold_study.study_uid, Tier.COLD)
    archive.tiers.cold_read_hook = None

    moto_s3.stop()
    with pytest.raises(StoreUnavailable):
        reader = await archive.open_blob((await archive.locate(cold_study.study_uid))[0])
        await reader.read_all()
    for loc in await archive.locate(hot_study.study_uid):
        reader = await archive.open_blob(loc)
        assert (
            hashlib.sha256(await reader.read_all()).hexdigest()
            == hot_study.sha256[loc.sop_instance_uid]
        )
        await reader.close()
    with pytest.raises(StoreUnavailable):
        await archive.migrate_study(hot_study.study_uid, Tier.COLD)
    assert set((await tiers_of(archive, hot_study.study_uid)).values()) == {Tier.HOT}

    # The background policy pauses while the store is down and carries on once it is back.
    archive.start_tiering(interval_seconds=0.2)
    task = archive._tier_task
    assert task is not None
    await _poll(lambda: task.last_error is not None, what="the policy to notice the outage")
    # Make the hot study due: nobody has read it for a year.
    await _age_study(archive, hot_study.study_uid, days=365)
    moto_s3.start()
    await _poll_async(
        lambda: _all_cold(archive, hot_study.study_uid), what="the migration to resume"
    )
    await archive.stop_tiering()
    await assert_intact(archive, hot_study)
    await assert_intact(archive, cold_study)


async def _all_cold(archive: Archive, study_uid: str) -> bool:
    """Every row says cold and the hot copies are gone (the round deletes them after the
    flip, so polling the rows alone races with the deletes)."""
    if set((await tiers_of(archive, study_uid)).values()) != {Tier.COLD}:
        return False
    return set((await copies(archive, study_uid)).values()) == {(False, True)}


async def _age_study(archive: Archive, study_uid: str, *, days: int) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from storage.index.schema import studies

    stamp = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds")
    async with archive._write.begin() as conn:
        await conn.execute(
            update(studies).where(studies.c.study_uid == study_uid).values(last_access_at=stamp)
        )


async def _poll(check: object, *, what: str, timeout: float = 30.0) -> None:
    import asyncio
    import time

    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _poll_async(check: object, *, what: str, timeout: float = 30.0) -> None:
    import asyncio
    import time

    assert callable(check)
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_open_archive_with_a_missing_bucket_fails_clearly(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    from config.settings import StorageSettings
    from storage.archive import open_archive

    settings = StorageSettings(
        data_dir=tmp_path / "data",
        cold_store="s3://arca-missing-bucket/cold",
        s3_endpoint_url=moto_s3.endpoint,
        s3_region="us-east-1",
    )
    with pytest.raises(StoreUnavailable, match=r"s3://arca-missing-bucket/cold.*start-up check"):
        await open_archive(settings)


async def test_status_and_result_texts(tiered_archive: Archive, tmp_path: Path) -> None:
    study = await ingest_series(tiered_archive, 2, tmp_path / "in")
    result = await tiered_archive.migrate_study(study.study_uid, Tier.COLD)
    assert result.complete
    assert result.describe().startswith(f"study {study.study_uid}: 2 instances (")
    text = (await tiered_archive.tier_status()).describe()
    assert text.splitlines()[0] == "hot:  0 instances, 0 bytes"
    assert text.splitlines()[1].startswith("cold: 2 instances, ")


async def test_a_complete_verified_cold_read_becomes_the_hot_copy(
    tiered_archive: Archive, tmp_path: Path, moto_s3: MotoS3, bucket: str
) -> None:
    archive = tiered_archive
    assert archive.tiers is not None
    study = await ingest_series(archive, 3, tmp_path / "in")
    await archive.migrate_study(study.study_uid, Tier.COLD)
    archive.tiers.cold_read_hook = lambda _study, reader: reader  # keep reads, no recall
    full, partial, corrupt = await archive.locate(study.study_uid)

    reader = await archive.open_blob(full)
    streamed = b"".join([c async for c in reader.iter_chunks(64 * 1024)])
    await reader.close()
    assert hashlib.sha256(streamed).hexdigest() == full.sha256

    # A blob of a few MB is fetched whole and verified when opened: even a client that goes
    # away after one chunk leaves a verified copy to keep.
    reader = await archive.open_blob(partial)
    async for _ in reader.iter_chunks(64 * 1024):
        break
    await reader.close()

    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint, region_name="us-east-1")
    s3.put_object(Bucket=bucket, Key=f"cold/{corrupt.blob_key}", Body=b"garbage")
    with pytest.raises(CorruptBlob):
        await archive.open_blob(corrupt)

    kept = {full.sop_instance_uid, partial.sop_instance_uid}
    for _ in range(200):  # the kept copies are put hot and flipped in the background
        placement = await copies(archive, study.study_uid)
        if all(placement[uid] == (True, False) for uid in kept):
            break
        await asyncio.sleep(0.05)
    tiers = await tiers_of(archive, study.study_uid)
    assert tiers == {
        full.sop_instance_uid: Tier.HOT,
        partial.sop_instance_uid: Tier.HOT,
        corrupt.sop_instance_uid: Tier.COLD,
    }
    placement = await copies(archive, study.study_uid)
    assert all(placement[uid] == (True, False) for uid in kept)
    assert not await archive.hot.exists(corrupt.blob_key)
    assert not list((archive.settings.data_dir / "spool").glob("*.part"))
