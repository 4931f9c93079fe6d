"""The job timeout inside one Transcoder: a hung job is killed even when nobody waits for it.

The hang is real (a worker stuck in a job) through the TEST-ONLY hook
``transcoding.jobs.HANG_FOR_TESTS``, set here in the environment the spawned workers inherit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from pydicom import uid

from config.settings import TranscodingSettings
from tests.data import small_ct, uids_of
from transcoding.jobs import HANG_FOR_TESTS
from transcoding.pool import Transcoder


async def test_a_hung_job_whose_caller_went_away_is_still_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hung, fine = small_ct(), small_ct()
    monkeypatch.setenv(HANG_FOR_TESTS, uids_of(hung)[2])
    settings = TranscodingSettings(workers=1, job_timeout=1.0)
    t = Transcoder(settings, start_method="spawn")  # spawn: workers see this environment
    workers: set[int] = set()
    try:
        workers = await t.worker_pids()  # started
        caller = asyncio.ensure_future(t.frames(hung, [1], uid.JPEGLSLossless))
        await asyncio.sleep(0.3)
        caller.cancel()  # e.g. a DIMSE peer or an HTTP client that went away
        deadline = time.monotonic() + 30
        while t.stats.timeouts == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert t.stats.timeouts == 1
        assert t.stats.pool_rebuilds == 1
        # the single worker was replaced and serves again
        [frame] = await t.frames(fine, [1], uid.JPEGLSLossless)
        assert frame.startswith(b"\xff\xd8")
    finally:
        if t.stats.timeouts == 0:
            # The failure this test is about: kill the stuck worker so the test fails
            # instead of hanging in aclose() for the hour the hook sleeps.
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
        await t.aclose()


async def test_a_worker_killed_while_idle_costs_the_next_job_nothing() -> None:
    t = Transcoder(TranscodingSettings(workers=1))
    try:
        [pid] = await t.worker_pids()
        os.kill(pid, signal.SIGKILL)  # e.g. the kernel's OOM killer, between jobs
        await asyncio.sleep(1.0)  # the executor notices and marks itself broken
        [frame] = await t.frames(small_ct(), [1], uid.JPEGLSLossless)
        assert frame.startswith(b"\xff\xd8")
        assert t.stats.pool_rebuilds == 1
        assert pid not in await t.worker_pids()
    finally:
        await t.aclose()


async def test_jobs_queued_behind_a_hung_one_are_resubmitted_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killing the pool for a timeout must not cancel the jobs still waiting in its queue:
    they are the other requests' work and run on the new pool."""
    hung = small_ct()
    others = [small_ct() for _ in range(4)]
    monkeypatch.setenv(HANG_FOR_TESTS, uids_of(hung)[2])
    t = Transcoder(TranscodingSettings(workers=1, job_timeout=2.0), start_method="spawn")
    workers: set[int] = set()
    try:
        workers = await t.worker_pids()
        stuck = asyncio.ensure_future(t.frames(hung, [1], uid.JPEGLSLossless))
        await asyncio.sleep(0.2)  # the hung job holds the only worker
        queued = [t.frames(ds, [1], uid.JPEGLSLossless) for ds in others]
        results = await asyncio.gather(*queued, return_exceptions=True)
        for result in results:
            assert isinstance(result, list), f"a queued job failed: {result!r}"
            assert result[0].startswith(b"\xff\xd8")
        with pytest.raises(Exception, match="did not finish within"):
            await stuck
        assert t.stats.timeouts == 1
    finally:
        if t.stats.timeouts == 0:
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
        await t.aclose()


async def test_a_slow_job_waiting_in_the_call_queue_is_not_timed_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The executor marks one job beyond the busy workers RUNNING while it still waits in its
    call queue: its clock must start when a worker takes it, or two legitimate jobs of 2 s
    on one worker would look like one of 4 s and be killed at a 3 s timeout."""
    slow = small_ct()
    monkeypatch.setenv(HANG_FOR_TESTS, f"{uids_of(slow)[2]}=2")
    t = Transcoder(TranscodingSettings(workers=1, job_timeout=3.0), start_method="spawn")
    try:
        await t.worker_pids()
        both = await asyncio.gather(
            t.frames(slow, [1], uid.JPEGLSLossless),
            t.frames(slow, [1], uid.JPEGLSLossless),
            return_exceptions=True,
        )
        for result in both:
            assert isinstance(result, list), f"a slow job was taken for a hung one: {result!r}"
        assert t.stats.timeouts == 0
    finally:
        await t.aclose()
