"""Pre-transcoding: the rest of a study into the rendition cache, in the syntax a client asked for.

A viewer that opens a study and retrieves its first series in a compressed transfer syntax
(PS3.18 §8.7.3.5: a ``transfer-syntax`` parameter the stored one does not match) will ask for
the study's other series in the same syntax next. When a WADO-RS retrieve is served with a
transcode target, :meth:`PreTranscoder.request` queues that study's *other* instances; one
background task then transcodes them, one codec job at a time, into the rendition cache
(``transcoding.pool.Transcoder``, keyed by the instance's SHA-256 and the syntax), so the next
retrieves are cache hits. The hot / page-cache side of prefetch is ``storage.prefetch``; a cold
instance is read through the archive, which shares its download with the prefetch recall.

Which syntax: exactly the target the retrieve itself produced, which is always one the client
listed in its Accept header (``DicomAcceptance.target_for`` only picks listed syntaxes). A
lossless target is pre-transcoded; a lossy one too, because the client named it — but never a
lossy syntax the client did not name (checked again here), and instances whose stored syntax
the client accepts are left alone (they are sent as stored).

Bounds (live requests come first): at most one pre-transcode job in the codec pool at any
time, so a live request queues behind at most one background job and has the other workers;
and none is submitted while live WADO-RS transcodes (:meth:`PreTranscoder.live`) already fill
every worker, so background work uses idle workers only (frame and rendering jobs are not
counted: they queue behind at most the one background job);
per request at most ``max_instances`` instances and ``max_bytes`` of stored bytes; a
(study, syntax) already queued, running, or done within ``recent_seconds`` is not queued
again; instances whose rendition is already cached are skipped without reading anything.
Failures are logged and never reach a client. :meth:`close` cancels the queue at shutdown; a
codec job already handed to a worker finishes there (the pool waits for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from conformance.transfer_syntaxes import TRANSFER_SYNTAXES
from dicomweb.resources import source_of
from storage.archive import ArchiveService
from storage.errors import NotFound, StorageError
from transcoding.errors import TranscodingError
from transcoding.service import TranscoderService

log = logging.getLogger("arca.dicomweb.pretranscode")


@dataclass
class PreTranscodeStats:
    """Counters for /health, tests and metrics (updated on the event loop only)."""

    studies_queued: int = 0
    studies_done: int = 0
    requests_deduplicated: int = 0
    transcoded: int = 0
    """Instances this module sent to the codec pool (each one job, or a share of a live one)."""
    already_cached: int = 0
    """Instances skipped because their rendition was cached (or being written) already."""
    failed: int = 0
    capped: int = 0
    """Instances left out by the per-request instance / byte caps."""
    active_jobs: int = 0
    """Pre-transcode jobs in the codec pool now (0 or 1)."""
    peak_jobs: int = 0
    """The most pre-transcode jobs ever in the pool at once: the bound is 1."""
    yielded_to_live: int = 0
    """Times a background job waited because live transcodes filled every worker."""
    queued: int = 0
    """(study, syntax) requests waiting or running now."""


@dataclass(frozen=True)
class _Job:
    study_uid: str
    target: str
    accepts: Callable[[str], bool] = field(compare=False)
    """Does the client take this stored syntax as it is (then nothing to transcode)?"""
    skip: frozenset[str] = field(compare=False)
    """SOP Instance UIDs the triggering retrieve transcodes itself."""


class PreTranscoder:
    """A background queue of (study, transfer syntax) pre-transcodes; one codec job at a time."""

    def __init__(
        self,
        archive: ArchiveService,
        transcoder: TranscoderService,
        *,
        max_instances: int,
        max_bytes: int,
        pool_workers: int,
        recent_seconds: float = 60.0,
    ) -> None:
        self.archive = archive
        self.transcoder = transcoder
        self.max_instances = max_instances
        self.max_bytes = max_bytes
        self.recent_seconds = recent_seconds
        self.pool_workers = max(1, pool_workers)
        self._live = 0
        self._live_changed = asyncio.Event()
        self.stats = PreTranscodeStats()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._pending: set[tuple[str, str]] = set()
        self._recent: dict[tuple[str, str], float] = {}
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        # Optional accessor of the concrete Transcoder: "cached, or being made?" without
        # reading anything.
        self._has_rendition: Callable[[str, str], bool] | None = getattr(
            transcoder, "has_rendition", None
        )

    def request(
        self,
        study_uid: str,
        target: str,
        *,
        asked: tuple[str, ...],
        accepts: Callable[[str], bool],
        skip: frozenset[str] = frozenset(),
    ) -> bool:
        """Queue the study's instances for ``target``; False when not queued (closed, a lossy
        syntax the client did not name, or deduplicated)."""
        if self._closed or self.max_instances <= 0:
            return False
        ts = TRANSFER_SYNTAXES.get(target)
        if ts is None or (ts.lossy and target not in asked):
            return False  # never produce lossy output the client did not ask for
        key = (study_uid, target)
        done_at = self._recent.get(key)
        recent = done_at is not None and time.monotonic() - done_at < self.recent_seconds
        if key in self._pending or recent:
            self.stats.requests_deduplicated += 1
            return False
        self._pending.add(key)
        self.stats.studies_queued += 1
        self.stats.queued = len(self._pending)
        self._idle.clear()
        self._queue.put_nowait(_Job(study_uid, target, accepts, skip))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="arca-pretranscode"
            )
        return True

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        """Marks a live (client) transcode as running in the pool for its duration."""
        self._live += 1
        try:
            yield
        finally:
            self._live -= 1
            self._live_changed.set()

    async def _pool_has_room(self) -> None:
        """Until live transcodes leave a worker free."""
        while self._live >= self.pool_workers:
            self.stats.yielded_to_live += 1
            self._live_changed.clear()
            await self._live_changed.wait()

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Until nothing is queued or running (tests)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    async def close(self) -> None:
        """Drop the queue and stop the worker (a job already in a codec worker finishes
        there; nobody waits for its answer)."""
        self._closed = True
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    # -- the worker -------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            key = (job.study_uid, job.target)
            try:
                await self._pretranscode(job)
            except NotFound:
                pass  # the study was deleted meanwhile
            except StorageError as exc:
                log.warning("pre-transcode of study %s stopped: %s", job.study_uid, exc)
            except Exception:
                log.exception("pre-transcode of study %s failed", job.study_uid)
            finally:
                self._pending.discard(key)
                if len(self._recent) > 10_000:
                    self._recent.clear()
                self._recent[key] = time.monotonic()
                self.stats.studies_done += 1
                self.stats.queued = len(self._pending)
                if not self._pending:
                    self._idle.set()

    async def _pretranscode(self, job: _Job) -> None:
        locations = await self.archive.locate(job.study_uid)
        instances, budget = self.max_instances, self.max_bytes
        for loc in locations:
            if loc.sop_instance_uid in job.skip or job.accepts(loc.transfer_syntax_uid):
                continue
            if self._is_cached(loc.sha256, job.target):
                self.stats.already_cached += 1
                continue
            if instances <= 0 or loc.size > budget:
                self.stats.capped += 1
                continue
            instances -= 1
            budget -= loc.size
            try:
                await self._pool_has_room()
                source = await source_of(self.archive, loc)
                self.stats.active_jobs += 1
                self.stats.peak_jobs = max(self.stats.peak_jobs, self.stats.active_jobs)
                try:
                    # One awaited job at a time: the bound on the pool.
                    await self.transcoder.transcode(source, job.target, cache_key=loc.sha256)
                finally:
                    self.stats.active_jobs -= 1
            except NotFound:
                continue  # deleted since locate()
            except StorageError as exc:
                self.stats.failed += 1
                log.warning("pre-transcode of %s skipped: %s", loc.sop_instance_uid, exc)
                continue
            except TranscodingError as exc:
                self.stats.failed += 1
                log.info("pre-transcode of %s skipped: %s", loc.sop_instance_uid, exc)
                continue
            self.stats.transcoded += 1

    def _is_cached(self, cache_key: str, syntax: str) -> bool:
        return self._has_rendition is not None and self._has_rendition(cache_key, syntax)
