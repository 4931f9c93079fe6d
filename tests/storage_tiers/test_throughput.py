"""Cold-tier retrieval throughput through the Archive, with and without prefetch (printed).

The S3 server is moto in its own process, so it does not share the test's interpreter (and
GIL) the way the in-process ThreadedMotoServer of the other tests does.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from config.settings import StorageSettings
from storage.archive import Archive, open_archive
from storage.cold import S3BlobStore
from storage.model import Tier
from tests.storage_tiers.conftest import moto_process
from tests.storage_tiers.helpers import StoredStudy, ingest_series, tiers_of


def add_latency(store: S3BlobStore, seconds: float) -> None:
    """Delay every HEAD and GET: a real object store answers after tens of milliseconds."""
    open_, stream = store.open, store.stream

    async def slow_open(key: str, expected_sha256: str | None = None) -> Any:
        await asyncio.sleep(seconds)
        return await open_(key, expected_sha256)

    async def slow_stream(key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        await asyncio.sleep(seconds)
        async for chunk in stream(key, chunk_size):
            yield chunk

    store.open = slow_open  # type: ignore[method-assign]
    store.stream = slow_stream  # type: ignore[method-assign]


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
    total = study.total

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

    async def scenario() -> tuple[float, float, float, float]:
        """(migrate, cold read without prefetch, cold read with prefetch, recall) seconds."""
        assert archive.tiers is not None and archive.prefetcher is not None
        t0 = time.perf_counter()
        await archive.migrate_study(study.study_uid, Tier.COLD)
        migrate_s = time.perf_counter() - t0
        hook = archive.tiers.cold_read_hook
        archive.tiers.cold_read_hook = None  # no recall, no prefetch: every read from S3
        cold_s = await read_series(study, via_metadata=False)
        archive.tiers.cold_read_hook = hook
        t0 = time.perf_counter()
        prefetch_s = await read_series(study, via_metadata=True)
        await archive.prefetcher.wait_idle(timeout=120)
        recall_s = time.perf_counter() - t0
        assert set((await tiers_of(archive, study.study_uid)).values()) == {Tier.HOT}
        return migrate_s, cold_s, prefetch_s, recall_s

    mb = total / 1e6

    def rate(seconds: float) -> str:
        return f"{seconds:.2f} s ({mb / seconds:.0f} MB/s, {100 / seconds:.0f} inst/s)"

    lines = [f"\n[tiers] 100-slice 512x512 CT series, {mb:.1f} MB, SQLite index:"]
    for label, latency in (("loopback moto", 0.0), ("moto + 20 ms per S3 request", 0.02)):
        if latency:
            assert archive.cold is not None
            add_latency(archive.cold, latency)
        migrate_s, cold_s, prefetch_s, recall_s = await scenario()
        lines += [
            f"  {label}:",
            f"    migrate hot->cold (upload + read-back verify): {rate(migrate_s)}",
            f"    read from cold, no prefetch:   {rate(cold_s)}",
            f"    read from cold, with prefetch: {rate(prefetch_s)}"
            f" (study fully hot {recall_s:.2f} s after the metadata request)",
        ]
    lines.append(f"  read once recalled hot: {rate(await read_series(study, via_metadata=False))}")
    print("\n".join(lines))
