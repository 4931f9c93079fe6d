"""``Transcoder``: the TranscoderService on a pool of single-threaded codec worker processes.

Why processes: codecs hold the GIL, and pylibjpeg-openjpeg segfaults when two threads encode at
once (FIELD-NOTES). Each worker is one process running one job at a time, so no codec ever runs
on the event loop, in a thread of the server process, or concurrently with itself in a process.

The workers are started (and their codec imports run) as soon as the Transcoder is made, from
a background thread, so the first request does not pay for process start-up. A transcode or a
rendering is answered as soon as the worker returns it; with a cache key it is also written to
the rendition cache in the background (held in memory until the file is in place, so a request
meanwhile still hits), and concurrent requests for one rendition share one job.

A worker that dies (segfault, abort, OOM kill) breaks the whole ``ProcessPoolExecutor``; every
job in flight then fails with BrokenProcessPool. The pool is rebuilt once per breakage and each
affected job is retried once on the new pool; a job that breaks the pool again (the culprit,
usually) fails with WorkerCrashed. The server process itself is never touched.

A job that runs longer than ``TranscodingSettings.job_timeout`` (a hung or runaway codec) fails
with JobTimedOut: its worker cannot be told apart from the others inside the executor, so the
pool's processes are killed and the pool rebuilt; the other jobs that were in flight lose their
work, not their answer: they are resubmitted to the new pool (not counted as their one retry).
The clock starts when a worker takes the job, not when it is submitted: the executor marks a
job RUNNING when it hands it to its FIFO call queue, where one job may still wait beyond the
running ones, so a RUNNING job counts as started only once fewer than ``workers`` jobs
submitted before it are unfinished. A long queue behind a busy pool never times out by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from config.settings import TranscodingSettings
from transcoding import jobs, registry
from transcoding.cache import RenditionCache
from transcoding.errors import JobTimedOut, WorkerCrashed
from transcoding.service import RenderParams, Source

T = TypeVar("T")

log = logging.getLogger("arca.transcoding")

COLLATERAL_RETRIES = 3
"""How often a job is resubmitted because another job's timeout killed the pool under it."""


@dataclass
class TranscoderStats:
    """Counters for tests and metrics (plain ints: only the event loop thread updates them)."""

    transcode_jobs: int = 0
    """Whole-instance transcodes that ran in a worker (cache misses)."""
    render_jobs: int = 0
    """Renderings (rendered / thumbnail) that ran in a worker (cache misses)."""
    frames_jobs: int = 0
    """Frame requests that ran in a worker."""
    cache_hits: int = 0
    """Renditions (transcoded instances and rendered images) answered from the cache."""
    pool_rebuilds: int = 0
    timeouts: int = 0
    """Jobs that ran past job_timeout (each killed the pool's workers)."""
    resubmitted: int = 0
    """Jobs resubmitted because another job's timeout killed the pool under them."""


class Transcoder:
    """Implements :class:`transcoding.service.TranscoderService`."""

    def __init__(
        self,
        settings: TranscodingSettings,
        cache_dir: Path | None = None,
        *,
        start_method: str = "forkserver",
        warm: bool = True,
    ) -> None:
        """``cache_dir`` (e.g. ``data/cache``) enables the rendition cache, bounded by
        ``settings.cache_bytes``. ``start_method`` is forkserver or spawn: never fork, which
        would copy the server's threads and locks into the worker. ``warm`` starts every
        worker now (in a background thread) instead of on the first job."""
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start method {start_method!r}: use forkserver or spawn")
        self.workers = settings.workers or os.cpu_count() or 1
        self.job_timeout = settings.job_timeout if settings.job_timeout > 0 else None
        self._context = multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._generation = 0
        self._killed: set[int] = set()
        self._submitted: dict[Future[Any], tuple[int, int]] = {}
        """Watched jobs: (pool generation, submission order), for when their clock starts."""
        self._order = itertools.count()
        """Generations whose workers were killed because a job timed out."""
        self._executor = self._new_executor()
        self._cache = (
            RenditionCache(cache_dir, settings.cache_bytes) if cache_dir is not None else None
        )
        self._inflight: dict[tuple[str, str], asyncio.Future[bytes]] = {}
        self._writing: dict[tuple[str, str], bytes] = {}
        """Renditions on their way into the cache (served from here until the file is in)."""
        self._writes: set[asyncio.Task[None]] = set()
        self.stats = TranscoderStats()
        if warm:
            threading.Thread(target=self._warm_up, name="transcoder-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        """Start every worker process with a no-op job (spawn + codec imports take seconds)."""
        with self._lock:
            executor = self._executor
        # Not waited for: a failure here shows again on the first real job (which rebuilds
        # the pool); RuntimeError means the pool was closed before this thread ran.
        with contextlib.suppress(RuntimeError):
            for _ in range(self.workers):
                executor.submit(jobs.worker_pid)

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=jobs.warm_worker,
            initargs=(os.getpid(),),
        )

    # -- TranscoderService -------------------------------------------------------------------

    def can_encode(self, transfer_syntax_uid: str) -> bool:
        return registry.can_encode(transfer_syntax_uid)

    def can_decode(self, transfer_syntax_uid: str) -> bool:
        return registry.can_decode(transfer_syntax_uid)

    async def transcode(
        self, source: Source, target_syntax: str, *, cache_key: str | None = None
    ) -> bytes:
        if cache_key is None or self._cache is None:
            return await self._transcode_in_worker(source, target_syntax)
        return await self._cached_or_made(
            (cache_key, target_syntax), lambda: self._transcode_in_worker(source, target_syntax)
        )

    async def cached(self, cache_key: str, kind: str) -> bytes | None:
        """The cached rendition, or None (no cache, or not cached: answered without I/O).

        ``kind`` is the transfer syntax of a transcode, the media type of a rendering. Lets a
        caller skip opening the source when the rendition is already there."""
        if self._cache is None:
            return None
        key = (cache_key, kind)
        data = self._writing.get(key)
        if data is None and key in self._cache:
            data = await asyncio.to_thread(self._cache.get, cache_key, kind)
        if data is not None:
            self.stats.cache_hits += 1
        return data

    def has_rendition(self, cache_key: str, kind: str) -> bool:
        """Is the rendition cached, being written, or being made now? No I/O, no counter:
        lets background work (dicomweb.pretranscode) skip it cheaply."""
        if self._cache is None:
            return False
        key = (cache_key, kind)
        return key in self._inflight or key in self._writing or key in self._cache

    async def frames(
        self, source: Source, frame_numbers: list[int], target_syntax: str | None
    ) -> list[bytes]:
        self.stats.frames_jobs += 1
        return await self._run(jobs.frames_job, source, list(frame_numbers), target_syntax)

    async def render(
        self,
        source: Source,
        frame: int | None,
        params: RenderParams,
        *,
        cache_key: str | None = None,
    ) -> bytes:
        if cache_key is None or self._cache is None:
            return await self._render_in_worker(source, frame, params)
        return await self._cached_or_made(
            (cache_key, params.media_type),
            lambda: self._render_in_worker(source, frame, params),
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the workers (waits for running jobs and cache writes)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def worker_pids(self) -> set[int]:
        """The pids answering jobs now (diagnostics and tests)."""
        return set(await asyncio.gather(*(self._run(jobs.worker_pid) for _ in range(self.workers))))

    async def crash_a_worker_for_tests(self) -> None:
        """Test hook: kill one worker mid-job with os.abort() (what a codec segfault does).

        Raises WorkerCrashed like any job whose worker died; never retried."""
        await self._run(jobs.abort_worker_for_tests, retry=False)

    # -- internals -----------------------------------------------------------------------------

    async def _transcode_in_worker(self, source: Source, target_syntax: str) -> bytes:
        self.stats.transcode_jobs += 1
        return await self._run(jobs.transcode_job, source, target_syntax)

    async def _render_in_worker(
        self, source: Source, frame: int | None, params: RenderParams
    ) -> bytes:
        self.stats.render_jobs += 1
        return await self._run(jobs.render_job, source, frame, params)

    async def _cached_or_made(
        self, key: tuple[str, str], make: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        cached = await self.cached(*key)
        if cached is not None:
            return cached
        # Single flight: concurrent requests for one rendition share one job.
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._make_and_cache(key, make))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        # shield: one client going away must not cancel the job the others wait for.
        return await asyncio.shield(task)

    async def _make_and_cache(
        self, key: tuple[str, str], make: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        data = await make()
        if self._cache is not None:
            # The answer does not wait for the cache file (fsync'd: milliseconds).
            self._writing[key] = data
            write = asyncio.ensure_future(self._write_cache(key, data))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)
        return data

    async def _write_cache(self, key: tuple[str, str], data: bytes) -> None:
        assert self._cache is not None
        try:
            await asyncio.to_thread(self._cache.put, key[0], key[1], data)
        except OSError as exc:  # a full cache disk costs a re-encode later, nothing more
            log.warning("rendition not cached: %s", exc)
        finally:
            self._writing.pop(key, None)

    async def _run(self, fn: Callable[..., T], *args: Any, retry: bool = True) -> T:
        crashes_allowed = 1 if retry else 0
        collateral_allowed = COLLATERAL_RETRIES
        idle_breaks_allowed = COLLATERAL_RETRIES
        while True:
            with self._lock:
                executor, generation = self._executor, self._generation
            try:
                future = executor.submit(partial(fn, *args))
            except BrokenProcessPool:
                # A worker died while no job was waiting on it (e.g. an OOM kill): not this
                # job's doing; replace the pool and submit again.
                self._rebuild(generation)
                if idle_breaks_allowed == 0:
                    raise WorkerCrashed("the codec worker pool keeps breaking") from None
                idle_breaks_allowed -= 1
                continue
            except RuntimeError:
                # Shut down between reading it and submitting: replaced by a rebuild.
                if generation == self._generation:
                    raise
                continue
            # The watch outlives a caller that goes away (client disconnect): a hung job must
            # still be killed at its timeout, or it would hold its worker for good.
            watch = asyncio.ensure_future(self._wait(future, generation, fn))
            watch.add_done_callback(_consume)
            try:
                return await asyncio.shield(watch)
            except asyncio.CancelledError:
                future.cancel()  # not started yet: dropped; running: stays watched
                raise
            except BrokenProcessPool:
                self._rebuild(generation)
                if generation in self._killed and collateral_allowed > 0:
                    collateral_allowed -= 1  # another job's timeout killed our worker
                    self.stats.resubmitted += 1
                    continue
                if crashes_allowed > 0:
                    crashes_allowed -= 1
                    continue
                raise WorkerCrashed(
                    "a codec worker process died while handling this request; "
                    "the worker pool was restarted"
                ) from None

    async def _wait(self, future: Future[T], generation: int, fn: Callable[..., Any]) -> T:
        """The job's result; JobTimedOut (after killing the pool) when it runs too long."""
        waiting = asyncio.wrap_future(future)
        if self.job_timeout is None:
            return await waiting
        poll = min(1.0, max(0.05, self.job_timeout / 20))
        started: float | None = None
        self._submitted[future] = (generation, next(self._order))
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=poll)
                if done:
                    return waiting.result()
                now = time.monotonic()
                if started is None:
                    if future.running() and self._taken_by_a_worker(future):
                        started = now
                    continue
                if now - started >= self.job_timeout:
                    break
        finally:
            self._submitted.pop(future, None)
            # Timed out (or the job was dropped): nobody reads this answer.
            waiting.cancel()
        self.stats.timeouts += 1
        self._kill(generation)
        log.error(
            "codec job %s ran longer than %g s (transcoding.job_timeout): its worker was "
            "killed and the pool restarted",
            getattr(fn, "__name__", fn),
            self.job_timeout,
        )
        raise JobTimedOut(
            f"the codec did not finish within {self.job_timeout:g} s "
            "(transcoding.job_timeout); its worker was stopped and the pool restarted"
        )

    def _taken_by_a_worker(self, future: Future[Any]) -> bool:
        """Is this RUNNING job with a worker, not waiting in the FIFO call queue? It is when
        fewer than ``workers`` jobs submitted before it to the same pool are unfinished."""
        generation, order = self._submitted[future]
        ahead = sum(
            1
            for other, (g, o) in list(self._submitted.items())
            if g == generation and o < order and not other.done()
        )
        return ahead < self.workers

    def _kill(self, generation: int) -> None:
        """Kill the workers of ``generation`` (the one with a hung job) and rebuild the pool."""
        with self._lock:
            if self._generation != generation:
                return  # already replaced (another job timed out or crashed it)
            executor = self._executor
            self._killed.add(generation)
        # ProcessPoolExecutor cannot stop one job; killing its processes breaks the pool,
        # which fails every job on it with BrokenProcessPool (resubmitted by _run).
        processes: dict[int, Any] = getattr(executor, "_processes", None) or {}
        for process in list(processes.values()):
            with contextlib.suppress(Exception):
                process.kill()
        self._rebuild(generation)

    def _rebuild(self, broken_generation: int) -> None:
        """Replace the broken executor once, however many jobs saw it break."""
        with self._lock:
            if self._generation != broken_generation:
                return
            old = self._executor
            self._executor = self._new_executor()
            self._generation += 1
            self.stats.pool_rebuilds += 1
        # Not cancel_futures: the jobs still queued on the broken pool are other requests'
        # work; it fails them with BrokenProcessPool, which _run resubmits to the new pool.
        old.shutdown(wait=False, cancel_futures=False)
        # Start the new workers now rather than on the jobs being resubmitted to them.
        threading.Thread(target=self._warm_up, name="transcoder-warm-up", daemon=True).start()


def _consume(task: asyncio.Future[Any]) -> None:
    """Mark a watch's outcome as seen (its caller, if still there, re-raises it)."""
    if not task.cancelled():
        task.exception()
