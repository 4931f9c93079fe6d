"""Ingest preparation in worker processes, so that parsing does not share the server's GIL.

:func:`storage.ingest.prepare` is Python from end to end (pydicom's parse, the checks, the
DICOM JSON). Run in the server's threads it holds the GIL the event loop needs to receive the
rest of a STOW-RS body or the next C-STORE; in worker processes it runs on another core. A
worker gets the spooled file's path and returns the :class:`~storage.ingest.Analysis`
(strings and numbers, tens of KB pickled), or the IngestRejected that says why not.

- The pool starts on the first object, in the background: until a worker has answered, objects
  are prepared in a thread as before, so a server that never ingests starts no processes and
  the first object does not wait for one to start.
- A worker that dies breaks the executor: the object it was preparing (and those in flight with
  it) are prepared again in a thread, and the pool is rebuilt for the next ones. Preparing is
  idempotent: it only reads the spooled file and fsyncs it.
- Workers end with the server however it ends (a pidfd of the server, as the codec workers do):
  their parent is the forkserver, which a SIGKILLed server does not stop.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial

from storage.ingest import Analysis

log = logging.getLogger("arca.storage")


class IngestWorkers:
    """Prepares incoming objects in ``workers`` processes (see the module docstring)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"ingest workers: {workers} (at least 1)")
        self.workers = workers
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._ready = False
        self._closed = False
        self.rebuilds = 0
        """Executors replaced after a worker died (for tests and logs)."""
        self.in_process = 0
        """Objects prepared in a server thread: before the pool was ready, or after a crash."""

    @property
    def ready(self) -> bool:
        """True once a worker of the current pool has answered."""
        return self._ready

    async def run(self, job: Callable[[], Analysis]) -> Analysis:
        """``job``: :func:`storage.ingest.prepare` with its arguments (a picklable partial)."""
        executor = self._start()
        if executor is not None and self._ready:
            try:
                future = executor.submit(job)
            except BrokenProcessPool:
                self._replace(executor)
            except RuntimeError:
                pass  # shut down under us: the server is stopping; finish this one here
            else:
                try:
                    return await asyncio.wrap_future(future)
                except BrokenProcessPool:
                    # A worker died (OOM kill, a crash in a C extension): this object is not
                    # at fault as far as we know; prepare it here, the next ones in a new pool.
                    self._replace(executor)
        self.in_process += 1
        return await asyncio.to_thread(job)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def worker_pids(self) -> set[int]:
        """The live workers' process ids (tests)."""
        with self._lock:
            executor = self._executor
        processes = getattr(executor, "_processes", None) or {}
        return {p.pid for p in processes.values() if p.pid is not None and p.is_alive()}

    def _start(self) -> ProcessPoolExecutor | None:
        """The executor, started on first use; None once closed (the server is stopping)."""
        with self._lock:
            if self._executor is None and not self._closed:
                self._ready = False
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_worker_started,
                    initargs=(os.getpid(),),
                )
                executor = self._executor
                # Every worker is started by a no-op job; the first answer opens the pool.
                for _ in range(self.workers):
                    executor.submit(os.getpid).add_done_callback(partial(self._on_warm, executor))
            return self._executor

    def _on_warm(self, executor: ProcessPoolExecutor, done: Future[int]) -> None:
        if done.cancelled() or done.exception() is not None:
            return  # a broken or closed pool: the next prepare notices and replaces it
        with self._lock:
            if self._executor is executor:
                self._ready = True

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is not broken:
                return  # another caller replaced it already
            self._executor = None
            self.rebuilds += 1
        log.warning("an ingest worker process died; starting new ones")
        broken.shutdown(wait=False, cancel_futures=True)


def _worker_started(server_pid: int) -> None:
    """Worker initializer: end with the server (see the module docstring)."""
    import select

    try:
        pidfd = os.pidfd_open(server_pid)
    except ProcessLookupError:
        os._exit(0)  # the server ended before this worker started
    except (AttributeError, OSError):
        return  # no pidfd here (not Linux): the pool's shutdown still ends the workers

    def wait() -> None:
        select.select([pidfd], [], [])
        os._exit(0)

    threading.Thread(target=wait, name="arca-exit-with-server", daemon=True).start()
    import storage.ingest  # noqa: F401  (pydicom and the rest: the first object does not wait)
