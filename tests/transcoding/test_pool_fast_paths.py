"""The pool's fast paths: workers started before the first job, cached renditions answered
without a source, cache writes off the answer's path."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pydicom import uid

from config.settings import TranscodingSettings
from tests.transcoding.samples import read, sample_file
from transcoding.pool import Transcoder


async def _started_workers(t: Transcoder, expected: int, timeout: float = 60.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes = dict(t._executor._processes)
        if len(processes) >= expected and all(p.pid for p in processes.values()):
            return {p.pid for p in processes.values() if p.pid is not None}
        await asyncio.sleep(0.05)
    raise AssertionError(f"{expected} workers did not start within {timeout} s")


async def test_workers_start_before_the_first_job() -> None:
    t = Transcoder(TranscodingSettings(workers=2))
    try:
        started = await _started_workers(t, 2)
        assert t.stats.transcode_jobs == 0
        # the jobs run on those very processes: nothing is spawned for them
        assert await t.worker_pids() <= started
    finally:
        await t.aclose()


async def test_without_warm_up_no_worker_starts_until_a_job() -> None:
    t = Transcoder(TranscodingSettings(workers=1), warm=False)
    try:
        await asyncio.sleep(0.3)
        assert not t._executor._processes
        await t.worker_pids()
        assert len(t._executor._processes) == 1
    finally:
        await t.aclose()


async def test_cached_answers_without_a_source(tmp_path: Path) -> None:
    settings = TranscodingSettings(workers=1, cache_bytes=10 * 1024**2)
    source = sample_file("CT_small.dcm")
    no_cache = Transcoder(settings, warm=False)
    try:
        assert await no_cache.cached("sha-ct", uid.JPEG2000Lossless) is None
    finally:
        await no_cache.aclose()
    t = Transcoder(settings, tmp_path / "cache")
    try:
        assert await t.cached("sha-ct", uid.JPEG2000Lossless) is None
        assert t.stats.cache_hits == 0
        out = await t.transcode(source, uid.JPEG2000Lossless, cache_key="sha-ct")
        # served whether the cache file is written yet or still on its way (held in memory)
        assert await t.cached("sha-ct", uid.JPEG2000Lossless) == out
        assert await t.cached("sha-ct", uid.RLELossless) is None
        assert (t.stats.transcode_jobs, t.stats.cache_hits) == (1, 1)
        assert read(out).file_meta.TransferSyntaxUID == uid.JPEG2000Lossless
    finally:
        await t.aclose()  # waits for the cache write
    assert len(list((tmp_path / "cache").glob("*.rendition"))) == 1
    t2 = Transcoder(settings, tmp_path / "cache", warm=False)
    try:
        assert await t2.cached("sha-ct", uid.JPEG2000Lossless) == out
        assert t2.stats.transcode_jobs == 0
    finally:
        await t2.aclose()
