"""The worker pool: concurrent J2K encodes, a worker crash, the cache, a loop never blocked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import uid

from config.settings import TranscodingSettings
from tests.transcoding.samples import clone_with_pixels, read, sample_file
from transcoding.errors import WorkerCrashed
from transcoding.pool import Transcoder


async def test_eight_concurrent_j2k_encodes_survive(transcoder: Transcoder) -> None:
    # pylibjpeg-openjpeg segfaults when two threads encode at once; workers are processes.
    sources = clone_with_pixels("693_UNCI.dcm", 8)
    rebuilds = transcoder.stats.pool_rebuilds
    outs = await asyncio.gather(*(transcoder.transcode(s, uid.JPEG2000Lossless) for s in sources))
    assert transcoder.stats.pool_rebuilds == rebuilds
    for source, out in zip(sources, outs, strict=True):
        ds = read(out)
        assert ds.file_meta.TransferSyntaxUID == uid.JPEG2000Lossless
        np.testing.assert_array_equal(ds.pixel_array, read(source).pixel_array)


async def test_worker_crash_rebuilds_pool_and_next_request_works() -> None:
    t = Transcoder(TranscodingSettings(workers=2))
    try:
        source = sample_file("CT_small.dcm")
        await t.transcode(source, uid.JPEG2000Lossless)  # warm: workers exist
        before = await t.worker_pids()
        # A worker dies (os.abort, as a codec segfault would) while innocent jobs are in flight.
        results = await asyncio.gather(
            t.crash_a_worker_for_tests(),
            *(t.transcode(source, uid.JPEGLSLossless) for _ in range(3)),
            return_exceptions=True,
        )
        assert isinstance(results[0], WorkerCrashed)
        # the innocent jobs were retried once on the rebuilt pool and succeeded
        for r in results[1:]:
            assert isinstance(r, bytes), r
            assert read(r).file_meta.TransferSyntaxUID == uid.JPEGLSLossless
        assert t.stats.pool_rebuilds == 1
        after = await t.worker_pids()
        assert not before & after  # fresh worker processes
        out = await t.transcode(source, uid.RLELossless)
        np.testing.assert_array_equal(read(out).pixel_array, read(source).pixel_array)
    finally:
        await t.aclose()


async def test_cache_hit_avoids_reencoding(tmp_path: Path) -> None:
    settings = TranscodingSettings(workers=1, cache_bytes=10 * 1024**2)
    source = sample_file("MR_small.dcm")
    t = Transcoder(settings, tmp_path / "cache")
    try:
        first = await t.transcode(source, uid.JPEG2000Lossless, cache_key="sha-mr")
        second = await t.transcode(source, uid.JPEG2000Lossless, cache_key="sha-mr")
        assert first == second
        assert (t.stats.transcode_jobs, t.stats.cache_hits) == (1, 1)
        # another syntax of the same instance is another rendition
        await t.transcode(source, uid.RLELossless, cache_key="sha-mr")
        assert t.stats.transcode_jobs == 2
        # concurrent requests for one rendition share one encode (single flight)
        outs = await asyncio.gather(
            *(t.transcode(source, uid.JPEGLSLossless, cache_key="sha-mr") for _ in range(4))
        )
        assert len(set(outs)) == 1
        assert t.stats.transcode_jobs == 3
    finally:
        await t.aclose()
    # the cache is on disk: a restarted node serves it without encoding
    t2 = Transcoder(settings, tmp_path / "cache")
    try:
        again = await t2.transcode(source, uid.JPEG2000Lossless, cache_key="sha-mr")
        assert again == first
        assert (t2.stats.transcode_jobs, t2.stats.cache_hits) == (0, 1)
    finally:
        await t2.aclose()


async def test_transcode_does_not_block_the_event_loop(transcoder: Transcoder) -> None:
    source = sample_file("RG1_UNCI.dcm")  # 1955x1841 CR: a J2K encode of ~1 s
    lags: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - start - 0.01)

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    out = await transcoder.transcode(source, uid.JPEG2000Lossless)
    elapsed = time.perf_counter() - started
    done.set()
    await tick
    assert read(out).file_meta.TransferSyntaxUID == uid.JPEG2000Lossless
    assert len(lags) > 5
    assert max(lags) < max(0.1, elapsed / 4), (max(lags), elapsed)


@pytest.mark.parametrize("sample", ["693_UNCI.dcm", "693_J2KR.dcm"])
async def test_measure_j2k_lossless_throughput(sample: str) -> None:
    """Printed, not asserted: images/s of J2K lossless encodes through a 2-worker pool."""
    count = 12
    sources = clone_with_pixels(sample, count)
    t = Transcoder(TranscodingSettings(workers=2))
    try:
        await asyncio.gather(*(t.transcode(s, uid.JPEG2000Lossless) for s in sources[:2]))  # warm
        started = time.perf_counter()
        outs = await asyncio.gather(*(t.transcode(s, uid.JPEG2000Lossless) for s in sources))
        elapsed = time.perf_counter() - started
    finally:
        await t.aclose()
    ratio = len(sources[0]) / (sum(len(o) for o in outs) / count)
    print(
        f"\nJ2K lossless through 2 workers, {sample} clones (512x512x16): "
        f"{count / elapsed:.1f} images/s ({elapsed / count * 1000:.1f} ms/image wall), "
        f"file ratio {ratio:.1f}:1"
    )
    assert len(outs) == count
