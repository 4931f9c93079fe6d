"""``Transcoder``: the TranscoderService on a pool of single-threaded codec worker processes.

Why processes: codecs hold the GIL, and pylibjpeg-openjpeg segfaults when two threads encode at
once (FIELD-NOTES). Each worker is one process running one job at a time, so no codec ever runs
on the event loop, in a thread of the server process, or concurrently with itself in a process.

The workers are started (and their codec imports run) as soon as the Transcoder is made, from
a background thread, so the first request does not pay for process start-up. A transcode is
answered as soon as the worker returns it; its rendition is written to the cache in the
background (held in memory until the file is in place, so a request meanwhile still hits).

A worker that dies (segfault, abort, OOM kill) breaks the whole ``ProcessPoolExecutor``; every
job in flight then fails with BrokenProcessPool. The pool is rebuilt once per breakage and each
affected job is retried once on the new pool; a job that breaks the pool again (the culprit,
usually) fails with WorkerCrashed. The server process itself is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from config.settings import TranscodingSettings
from transcoding import jobs, registry
from transcoding.cache import RenditionCache
from transcoding.errors import WorkerCrashed
from transcoding.service import RenderParams, Source

T = TypeVar("T")

log = logging.getLogger("arca.transcoding")


@dataclass
class TranscoderStats:
    """Counters for tests and metrics (plain ints: only the event loop thread updates them)."""

    transcode_jobs: int = 0
    """Whole-instance transcodes that ran in a worker (cache misses)."""
    cache_hits: int = 0
    pool_rebuilds: int = 0


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
        self._context = multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._generation = 0
        self._executor = self._new_executor()
        self._cache = (
            RenditionCache(cache_dir, settings.cache_bytes) if cache_dir is not None else None
        )
        self._inflight: dict[tuple[str, str], asyncio.Task[bytes]] = {}
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
            max_workers=self.workers, mp_context=self._context, initializer=jobs.warm_worker
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
        cached = await self.cached(cache_key, target_syntax)
        if cached is not None:
            return cached
        # Single flight: concurrent requests for one rendition share one encode.
        key = (cache_key, target_syntax)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._transcode_and_cache(source, target_syntax, key))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        # shield: one client going away must not cancel the encode the others wait for.
        return await asyncio.shield(task)

    async def cached(self, cache_key: str, target_syntax: str) -> bytes | None:
        """The cached rendition, or None (no cache, or not cached: answered without I/O).

        Lets a caller skip opening the source when the rendition is already there."""
        if self._cache is None:
            return None
        key = (cache_key, target_syntax)
        data = self._writing.get(key)
        if data is None and key in self._cache:
            data = await asyncio.to_thread(self._cache.get, cache_key, target_syntax)
        if data is not None:
            self.stats.cache_hits += 1
        return data

    async def frames(
        self, source: Source, frame_numbers: list[int], target_syntax: str | None
    ) -> list[bytes]:
        return await self._run(jobs.frames_job, source, list(frame_numbers), target_syntax)

    async def render(self, source: Source, frame: int | None, params: RenderParams) -> bytes:
        return await self._run(jobs.render_job, source, frame, params)

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

    async def _transcode_and_cache(
        self, source: Source, target_syntax: str, key: tuple[str, str]
    ) -> bytes:
        data = await self._transcode_in_worker(source, target_syntax)
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
        loop = asyncio.get_running_loop()
        attempts = 2 if retry else 1
        for attempt in range(1, attempts + 1):
            with self._lock:
                executor, generation = self._executor, self._generation
            try:
                return await loop.run_in_executor(executor, partial(fn, *args))
            except BrokenProcessPool:
                self._rebuild(generation)
                if attempt == attempts:
                    raise WorkerCrashed(
                        "a codec worker process died while handling this request; "
                        "the worker pool was restarted"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _rebuild(self, broken_generation: int) -> None:
        """Replace the broken executor once, however many jobs saw it break."""
        with self._lock:
            if self._generation != broken_generation:
                return
            old = self._executor
            self._executor = self._new_executor()
            self._generation += 1
            self.stats.pool_rebuilds += 1
        old.shutdown(wait=False, cancel_futures=True)
