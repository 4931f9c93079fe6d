"""Cold-tier retrieval throughput through the Archive, with and without prefetch (printed).

The S3 server is moto in its own process, so it does not share the test's interpreter (and
GIL) the way the in-process ThreadedMotoServer of the other tests does.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest

from config.settings import StorageSettings
from storage.archive import Archive, open_archive
from storage.model import Tier
from tests.storage_tiers.conftest import moto_process
from tests.storage_tiers.helpers import StoredStudy, ingest_series, tiers_of


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_process() as endpoint:
        yield endpoint


@pytest.fixture
async def archive(s3_endpoint: str, tmp_path: Path) -> AsyncIterator[Archive]:
    bucket = f"arca-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    settings = StorageSettings(
        data_dir=tmp_path / "data",
        cold_store=f"s3://{bucket}/cold",
        s3_endpoint_url=s3_endpoint,
        s3_region="us-east-1",
    )
    opened = await open_archive(settings)
    try:
        yield opened
    finally:
        await opened.close()


async def test_cold_retrieval_throughput_with_and_without_prefetch(
    archive: Archive, tmp_path: Path
) -> None:
    """Measured, not asserted: a 512x512 CT series of 100 slices read through the Archive
    (SQLite index, moto in its own process as the S3 server, default prefetch settings)."""
    assert archive.tiers is not None and archive.prefetcher is not None
    study = await ingest_series(archive, 100, tmp_path / "in")
    total = 100 * study.size

    async def read_series(stored: StoredStudy, *, via_metadata: bool) -> float:
        t0 = time.perf_counter()
        if via_metadata:
            await archive.instance_metadata(stored.study_uid)
        for loc in await archive.locate(stored.study_uid):
            reader = await archive.open_blob(loc)
            digest = hashlib.sha256()
            async for chunk in reader.iter_chunks():
                digest.update(chunk)
            await reader.close()
            assert digest.hexdigest() == stored.sha256[loc.sop_instance_uid]
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    await archive.migrate_study(study.study_uid, Tier.COLD)
    migrate_s = time.perf_counter() - t0

    hook = archive.tiers.cold_read_hook
    archive.tiers.cold_read_hook = None  # no recall, no prefetch: every read from S3
    cold_s = await read_series(study, via_metadata=False)
    archive.tiers.cold_read_hook = hook

    prefetch_s = await read_series(study, via_metadata=True)
    await archive.prefetcher.wait_idle(timeout=120)
    recall_s = time.perf_counter() - t0 - migrate_s - cold_s
    assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.HOT}
    hot_s = await read_series(study, via_metadata=False)

    mb = total / 1e6
    print(
        f"\n[tiers] 100-slice CT series, {mb:.1f} MB, {archive.settings.index_url or 'sqlite'}:"
        f"\n  migrate hot->cold (upload + read-back verify): {migrate_s:.2f} s"
        f" ({mb / migrate_s:.0f} MB/s)"
        f"\n  read from cold, no prefetch:   {cold_s:.2f} s ({mb / cold_s:.0f} MB/s,"
        f" {100 / cold_s:.0f} inst/s)"
        f"\n  read from cold, with prefetch: {prefetch_s:.2f} s ({mb / prefetch_s:.0f} MB/s,"
        f" {100 / prefetch_s:.0f} inst/s)"
        f"\n  whole study recalled by the prefetch: {recall_s:.2f} s after the metadata request"
        f"\n  read again once recalled hot:  {hot_s:.2f} s ({mb / hot_s:.0f} MB/s,"
        f" {100 / hot_s:.0f} inst/s)"
    )
