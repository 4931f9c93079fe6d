"""Prefetch: bring a study hot (and into the page cache) before the viewer asks for its pixels.

A viewer opening a study first fetches its metadata, then reads series after series. When the
metadata (or the first series) is asked for, :meth:`Prefetcher.request` queues the study; a
few workers then recall its cold instances (through :class:`storage.tiering.TierManager`, so
the same verified, crash-safe migration) and ask the kernel to read its hot files ahead
(``posix_fadvise(WILLNEED)``). Opening a cold instance queues an *urgent* recall of its study.

Bounds: at most ``prefetch_max_concurrency`` blob transfers at once over all studies, at most
``prefetch_max_bytes`` copied or read ahead per study request; a study already queued or being
prefetched is not queued again. Live requests come first: urgent recalls jump the queue, and
while a live cold read of *another* study is open the prefetch transfers drop to one at a
time, so prefetch never competes with a viewer for the cold store's bandwidth. A live read of
the study being prefetched does not slow it down: both fetch through
:meth:`TierManager.fetch_cold`, so every blob is downloaded once whoever asks first, and the
recall running ahead of the viewer is what makes its next reads hot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from storage.blobs import BlobReader
from storage.errors import NotFound, StorageError
from storage.hot import will_need
from storage.model import Tier
from storage.tiering import TierManager

log = logging.getLogger(__name__)

URGENT = 0
"""Priority of a recall caused by a live cold read."""
BACKGROUND = 1
"""Priority of a prefetch caused by a metadata / first-series request."""


@dataclass
class PrefetchStats:
    """Counters for tests and metrics."""

    studies_done: int = 0
    bytes_recalled: int = 0
    bytes_warmed: int = 0
    peak_transfers: int = 0
    requests_deduplicated: int = 0


class Prefetcher:
    """A low-priority queue of studies to bring hot; deduplicated per study."""

    def __init__(
        self,
        tiers: TierManager,
        *,
        max_concurrency: int,
        max_bytes: int,
        workers: int = 2,
        recent_seconds: float = 60.0,
    ) -> None:
        self.recent_seconds = recent_seconds
        self._recent: dict[str, float] = {}
        self.tiers = tiers
        self.max_concurrency = max(1, max_concurrency)
        self.max_bytes = max_bytes
        self.stats = PrefetchStats()
        self._queue: asyncio.PriorityQueue[tuple[int, int, str]] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._pending: set[str] = set()
        self._urgent: set[str] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._n_workers = max(1, min(workers, self.max_concurrency))
        self._cond = asyncio.Condition()
        self._inflight = 0
        self._live: dict[str | None, int] = {}
        """Open live cold reads per StudyInstanceUID (None: study not known)."""
        self._idle = asyncio.Event()
        self._idle.set()

    # -- requests ---------------------------------------------------------------------------

    def request(self, study_uid: str, *, urgent: bool = False) -> bool:
        """Queue the study; False when it is already queued or running, or (for a background
        request) was prefetched within the last ``recent_seconds`` (deduplicated)."""
        # A viewer asking for the study is an access: keeps it off the policy's LRU end.
        self.tiers.touch(study_uid)
        if study_uid in self._pending and not (urgent and study_uid not in self._urgent):
            self.stats.requests_deduplicated += 1
            return False
        done_at = self._recent.get(study_uid)
        if not urgent and done_at is not None and time.monotonic() - done_at < self.recent_seconds:
            self.stats.requests_deduplicated += 1
            return False
        self._pending.add(study_uid)
        if urgent:
            self._urgent.add(study_uid)
        self._idle.clear()
        self._queue.put_nowait((URGENT if urgent else BACKGROUND, next(self._order), study_uid))
        self._ensure_workers()
        return True

    def on_cold_read(self, study_uid: str, reader: BlobReader) -> BlobReader:
        """TierManager hook: a cold instance was opened; recall its study in the background
        and count the read as live until it is closed."""
        self.request(study_uid, urgent=True)
        return self.track_live(reader, study_uid)

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Until nothing is queued or running (tests, graceful shutdown)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    # -- live-request priority ----------------------------------------------------------------

    def track_live(self, reader: BlobReader, study_uid: str | None = None) -> BlobReader:
        """Mark a live (client) cold read of ``study_uid`` as open until the reader is
        closed."""
        self._live[study_uid] = self._live.get(study_uid, 0) + 1
        return _LiveReader(reader, self, study_uid)

    async def _live_done(self, study_uid: str | None) -> None:
        async with self._cond:
            left = self._live.get(study_uid, 0) - 1
            if left > 0:
                self._live[study_uid] = left
            else:
                self._live.pop(study_uid, None)
            self._cond.notify_all()

    def _limit(self, study_uid: str | None) -> int:
        others = any(uid != study_uid or uid is None for uid in self._live)
        return 1 if others else self.max_concurrency

    def for_study(self, study_uid: str) -> _StudySlots:
        """The transfer limiter of a prefetch of ``study_uid``."""
        return _StudySlots(self, study_uid)

    @contextlib.asynccontextmanager
    async def slot(self, study_uid: str | None = None) -> AsyncIterator[None]:
        """One transfer: at most max_concurrency at once; one while a live read of another
        study (or of an unknown one) is open."""
        async with self._cond:
            await self._cond.wait_for(lambda: self._inflight < self._limit(study_uid))
            self._inflight += 1
            self.stats.peak_transfers = max(self.stats.peak_transfers, self._inflight)
        try:
            yield
        finally:
            async with self._cond:
                self._inflight -= 1
                self._cond.notify_all()

    # -- workers ----------------------------------------------------------------------------

    def _ensure_workers(self) -> None:
        self._workers = [w for w in self._workers if not w.done()]
        loop = asyncio.get_running_loop()
        while len(self._workers) < self._n_workers:
            self._workers.append(loop.create_task(self._work(), name="arca-prefetch"))

    async def _work(self) -> None:
        while True:
            _priority, _seq, study_uid = await self._queue.get()
            urgent = study_uid in self._urgent
            try:
                await self._prefetch(study_uid, urgent=urgent)
            except NotFound:
                pass
            except StorageError as exc:
                log.warning("prefetch of study %s stopped: %s", study_uid, exc)
            except Exception:
                log.exception("prefetch of study %s failed", study_uid)
            finally:
                self._pending.discard(study_uid)
                self._urgent.discard(study_uid)
                if len(self._recent) > 10_000:
                    self._recent.clear()
                self._recent[study_uid] = time.monotonic()
                self.stats.studies_done += 1
                self._queue.task_done()
                if not self._pending:
                    self._idle.set()

    async def _prefetch(self, study_uid: str, *, urgent: bool) -> None:
        # A recall caused by a cold read brings the whole study; a prefetch is bounded.
        budget = None if urgent else self.max_bytes
        result = await self.tiers.migrate_study(
            study_uid, Tier.HOT, max_bytes=budget, limiter=self.for_study(study_uid)
        )
        self.stats.bytes_recalled += result.bytes
        remaining = None if budget is None else budget - result.bytes
        await self._warm(study_uid, remaining)

    async def _warm(self, study_uid: str, budget: int | None) -> None:
        """Ask the kernel to read the study's hot files into the page cache."""
        for key, size, tier in await self.tiers.study_blobs(study_uid):
            if tier is not Tier.HOT and not self.tiers.write_through:
                continue  # (with write-through, cold rows' hot copies are this node's cache)
            if budget is not None:
                if size > budget:
                    break
                budget -= size
            async with self.slot(study_uid):
                await asyncio.to_thread(will_need, [self.tiers.hot.path_of(key)])
            self.stats.bytes_warmed += size

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []


class _StudySlots:
    """Prefetcher.slot for one study (a storage.tiering.TransferLimiter)."""

    def __init__(self, owner: Prefetcher, study_uid: str) -> None:
        self._owner = owner
        self._study_uid = study_uid

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._owner.slot(self._study_uid)


class _LiveReader:
    """A BlobReader that tells the prefetcher when the live read ends."""

    def __init__(self, inner: BlobReader, owner: Prefetcher, study_uid: str | None) -> None:
        self._inner = inner
        self._owner: Prefetcher | None = owner
        self._study_uid = study_uid
        self.size = inner.size
        self.local_path = inner.local_path

    async def read_range(self, offset: int, length: int) -> bytes:
        return await self._inner.read_range(offset, length)

    async def iter_chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        async for chunk in self._inner.iter_chunks(chunk_size):
            yield chunk

    async def read_all(self) -> bytes:
        return await self._inner.read_all()

    async def close(self) -> None:
        owner, self._owner = self._owner, None
        try:
            await self._inner.close()
        finally:
            if owner is not None:
                await owner._live_done(self._study_uid)
