"""Ingest preparation in worker processes, so that parsing does not share the server's GIL.

:func:`storage.ingest.prepare` is Python from end to end (pydicom's parse, the checks, the
DICOM JSON). Run in the server's threads it holds the GIL the event loop needs to receive the
rest of a STOW-RS body or the next C-STORE; in worker processes it runs on another core. A
worker gets the spooled file's path and returns the :class:`~storage.ingest.Analysis`
(strings and numbers, tens of KB pickled), or the IngestRejected that says why not.

- Each worker is one process on one socket, driven from the event loop itself: the loop writes
  the job (a few hundred bytes) and reads the answer when the socket is readable. No thread of
  the server is involved, so handing a job over never waits for the GIL (a
  ``ProcessPoolExecutor`` moves every job and answer through two threads of its own).
- The workers start in the background when ``arca serve`` starts (elsewhere, e.g. ``arca
  import``, with the first object). Until one has said it is ready, objects are prepared in a
  thread as before: no object waits for a process to start.
- A worker that dies costs no object: the one it was preparing is prepared again in a thread
  (preparing only reads the spooled file and fsyncs it) and a new worker takes its place.
- Workers end with the server however it ends (a pidfd of the server, as the codec workers
  do): their parent is the forkserver, which a SIGKILLed server does not stop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from storage.errors import StoreUnavailable
from storage.ingest import Analysis

log = logging.getLogger("arca.storage")

Job = Callable[[], Analysis]
""":func:`storage.ingest.prepare` with its arguments (a picklable partial)."""


class _WorkerDied(Exception):
    """The worker preparing a job ended before it answered."""


_FRAME = struct.Struct("!Q")
"""Each message on a worker's socket: its pickle's length, then the pickle."""


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    sock: socket.socket
    """Non-blocking (the event loop reads it when readable)."""
    received: bytearray = field(default_factory=bytearray)
    ready: bool = False
    answer: asyncio.Future[Analysis] | None = None
    """The job in progress; None when the worker is idle."""


class IngestWorkers:
    """Prepares incoming objects in ``workers`` processes (see the module docstring).

    Used from one event loop (the server's)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"ingest workers: {workers} (at least 1)")
        self.workers = workers
        self._context = multiprocessing.get_context("forkserver")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._all: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._waiting: collections.deque[asyncio.Future[_Worker | None]] = collections.deque()
        """Jobs waiting for an idle worker, oldest first."""
        self._starting = 0
        self._closed = False
        self._cannot_start = False
        """Set when a worker could not start or died before it was ready: no more are started
        (the cause would repeat), objects are prepared in the server."""
        self.rebuilds = 0
        """Workers replaced after one died (for tests and logs)."""
        self.in_process = 0
        """Objects prepared in a server thread: before a worker was ready, or after a crash."""

    @property
    def ready_workers(self) -> int:
        """Workers that have said they are ready."""
        return sum(1 for w in self._all if w.ready)

    @property
    def ready(self) -> bool:
        return self.ready_workers > 0

    def start(self) -> None:
        """Start the workers now, in the background (else the first object starts them).
        Call from the event loop."""
        self._loop = asyncio.get_running_loop()
        while (
            len(self._all) + self._starting < self.workers
            and not self._closed
            and not self._cannot_start
        ):
            self._starting += 1
            task = self._loop.create_task(self._spawn())
            task.add_done_callback(_consume)

    async def run(self, job: Job) -> Analysis:
        # The workers' sockets belong to the loop that started them (the server's); a call
        # from another loop is prepared here.
        if self._loop is None or asyncio.get_running_loop() is self._loop:
            self.start()
            worker = await self._take() if self.ready else None
            if worker is not None:
                try:
                    return await self._submit(worker, job)
                except _WorkerDied:
                    pass  # prepared again here, below: the object is not at fault
        self.in_process += 1
        return await asyncio.to_thread(job)

    def stats(self) -> dict[str, int | bool]:
        """For ``GET /health``."""
        return {
            "workers": self.workers,
            "ready": self.ready,
            "ready_workers": self.ready_workers,
            "prepared_in_process": self.in_process,
            "rebuilds": self.rebuilds,
        }

    def close(self) -> None:
        self._closed = True
        for worker in list(self._all):
            self._forget(worker)
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # no worker will come: prepared in the server

    def worker_pids(self) -> set[int]:
        """The live workers' process ids (tests)."""
        return {w.process.pid for w in self._all if w.process.pid and w.process.is_alive()}

    # -- workers ---------------------------------------------------------------------------

    async def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            process = self._context.Process(
                target=_serve, args=(theirs, os.getpid()), name="arca-ingest", daemon=True
            )
            # Starting a process talks to the forkserver (and may start it): not on the loop.
            await asyncio.to_thread(process.start)
            theirs.close()  # the worker's end lives in the worker only: its death is EOF here
        except (OSError, RuntimeError) as exc:
            ours.close()
            theirs.close()
            self._cannot_start = True
            log.error(
                "cannot start an ingest worker; objects are prepared in the server process: %s",
                exc,
            )
            return
        finally:
            self._starting -= 1
        ours.setblocking(False)
        worker = _Worker(process, ours)
        if self._closed:
            self._forget(worker)
            return
        self._all.append(worker)
        assert self._loop is not None
        self._loop.add_reader(ours.fileno(), self._on_readable, worker)

    def _on_readable(self, worker: _Worker) -> None:
        try:
            data = worker.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._died(worker)  # EOF: the worker ended
            return
        buffer = worker.received
        buffer += data
        while len(buffer) >= _FRAME.size:
            (length,) = _FRAME.unpack_from(buffer)
            if len(buffer) < _FRAME.size + length:
                return  # the rest of this answer is still on its way
            payload = buffer[_FRAME.size : _FRAME.size + length]
            del buffer[: _FRAME.size + length]
            self._answered(worker, payload)

    def _answered(self, worker: _Worker, payload: bytearray) -> None:
        try:
            kind, value = pickle.loads(payload)  # from our own worker process
        except Exception as exc:  # an answer that does not unpickle: that job failed
            kind, value = (
                "error",
                StoreUnavailable(f"an ingest worker's answer is unreadable: {exc}"),
            )
        if kind == "ready":
            worker.ready = True
        else:
            answer, worker.answer = worker.answer, None
            if answer is not None and not answer.done():
                if kind == "ok":
                    answer.set_result(value)
                else:
                    answer.set_exception(value)
        self._release(worker)

    def _died(self, worker: _Worker) -> None:
        answer, worker.answer = worker.answer, None
        if answer is not None and not answer.done():
            answer.set_exception(_WorkerDied())
        self._forget(worker)
        if not worker.ready:
            self._cannot_start = True
            log.error(
                "an ingest worker ended before it was ready (exit code %s); objects are "
                "prepared in the server process",
                worker.process.exitcode,
            )
        elif not self._closed:
            self.rebuilds += 1
            log.warning(
                "an ingest worker process ended (exit code %s); starting another",
                worker.process.exitcode,
            )
            self.start()

    def _forget(self, worker: _Worker) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(worker.sock.fileno())
        worker.sock.close()
        if worker in self._all:
            self._all.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)

    # -- jobs ------------------------------------------------------------------------------

    async def _take(self) -> _Worker | None:
        """An idle worker (waiting for one if all are busy); None when there is none left."""
        if self._idle:
            return self._idle.pop()
        if not self._all:
            return None
        assert self._loop is not None
        waiter: asyncio.Future[_Worker | None] = self._loop.create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            handed = waiter.result() if waiter.done() and not waiter.cancelled() else None
            if handed is not None:
                self._release(handed)  # handed over just as we were cancelled
            raise

    def _release(self, worker: _Worker) -> None:
        if not worker.ready or worker.answer is not None or worker not in self._all:
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    async def _submit(self, worker: _Worker, job: Job) -> Analysis:
        assert self._loop is not None
        answer: asyncio.Future[Analysis] = self._loop.create_future()
        worker.answer = answer
        try:
            # A few hundred bytes, one job per worker at a time: the socket's buffer takes them.
            worker.sock.sendall(_frame(job))
        except OSError:
            self._died(worker)
        # Shielded: a cancelled caller (the client went away) leaves the worker busy until its
        # answer arrives, so that no other job is sent to it meanwhile.
        return await asyncio.shield(answer)


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("ingest worker start failed: %s", task.exception())


def _serve(sock: socket.socket, server_pid: int) -> None:
    """A worker's main loop: prepare each job received, send back the result or the error."""
    # A signal to the server's whole process group (systemd stopping a control group, Ctrl-C
    # in a terminal) is the server's to act on: it ends this worker by closing its socket
    # when it shuts down, and should the server die, _exit_with ends it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _exit_with(server_pid)
    import storage.ingest  # noqa: F401  (pydicom and the rest, before saying ready)

    try:
        sock.sendall(_frame(("ready", os.getpid())))
    except OSError:
        return  # the server closed the pool while this worker started
    with sock.makefile("rb") as incoming:
        while True:
            try:
                header = incoming.read(_FRAME.size)
                if len(header) < _FRAME.size:
                    return  # the server closed the pool
                (length,) = _FRAME.unpack(header)
                job = pickle.loads(incoming.read(length))  # from the server that started us
            except OSError:
                return
            try:
                answer: tuple[str, Any] = ("ok", job())
            except Exception as exc:
                answer = ("error", exc)
            try:
                message = _frame(answer)
            except Exception as exc:  # an error that does not pickle
                error = StoreUnavailable(f"ingest worker: {type(exc).__name__}: {exc}")
                message = _frame(("error", error))
            try:
                sock.sendall(message)
            except OSError:
                return


def _exit_with(server_pid: int) -> None:
    """End this worker as soon as the server ends (see the module docstring)."""
    import select

    try:
        pidfd = os.pidfd_open(server_pid)
    except ProcessLookupError:
        os._exit(0)  # the server ended before this worker started
    except (AttributeError, OSError):
        return  # no pidfd here (not Linux): the server closing the socket still ends the worker

    def wait() -> None:
        select.select([pidfd], [], [])
        os._exit(0)

    threading.Thread(target=wait, name="arca-exit-with-server", daemon=True).start()
