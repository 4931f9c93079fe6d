"""Blob placement between the hot (filesystem) and cold (S3) tiers: policy, migration, recall.

New instances land hot. :meth:`TierManager.run_policy` moves studies cold that nobody read for
``migrate_after_days``, and the least recently used ones while the hot tier holds more than
``hot_high_watermark_bytes``; :meth:`TierManager.migrate_study` moves one study either way
(recall = to hot). :class:`TierPolicyTask` runs the policy periodically in the server.

Reads and recalls share their downloads (:meth:`TierManager.fetch_cold`): a cold blob is
fetched by one GET however many readers and recalls want it at once, verified, handed to
all of them, and written as the hot copy; the recall flips rows and deletes cold copies in
batches (one index transaction and one S3 DeleteObjects request per batch).

Crash safety. The ``instances.tier`` column names the copy that readers use, and every state a
crash (kill -9) can leave is valid:

====================  ==========================  ===================================
row says              copies that exist           how it got there / what happens
====================  ==========================  ===================================
source tier           source (+ partial target?)  before/while copying: S3 PUTs and the
                                                  hot tier's temp+rename are atomic, so
                                                  a target copy is complete or absent
source tier           source + verified target    after copy, before the flip
target tier           source + target             after the flip, before deleting source
target tier           target                      done
====================  ==========================  ===================================

:meth:`TierManager.sweep` (run at start-up) deletes the copy on the tier the row does not
name. Two rules make this safe between concurrent migrations, recalls and sweeps on any
number of nodes: a row is flipped only inside a transaction that locks it (``SELECT ... FOR
UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) and sees the target copy present; a
copy is deleted only inside such a transaction that sees the row name the *other* tier. The
source copy is deleted only after the flip committed, so the row never names a deleted copy.
Copies are verified before the flip: the cold copy is read back and hashed (S3 ETags are not
content hashes for multipart uploads), a recalled copy is hashed before it is written hot
(whole, for blobs up to FETCH_WHOLE_BYTES; while it downloads, for larger ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Select, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from config.settings import StorageSettings
from storage.blobs import BlobReader
from storage.cold import S3BlobStore
from storage.errors import CorruptBlob, NotFound, StorageError, StoreUnavailable
from storage.hot import HotFilesystemStore
from storage.index import engine as index_engine
from storage.index.schema import instances, series, studies
from storage.model import InstanceLocation, Tier

log = logging.getLogger(__name__)

_BATCH = 32
"""Instances flipped per index transaction: bounds how long a migration holds row locks."""
_LOOKUP_BATCH = 500
"""Blob keys looked up in the index per query (sweep, cache eviction)."""
_LOW_WATERMARK = 0.9
"""Once over the high watermark, move studies cold until the hot tier is under 90% of it."""
FETCH_WHOLE_BYTES = 16 << 20
"""Cold blobs up to this size (CT/MR slices, most single-frame images) are fetched whole, by
one shared GET, when opened (see :meth:`TierManager.fetch_cold`); larger ones stream from the
object store, so a request holds at most a few of these in memory at once."""


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    # Same form as the index's other timestamps (storage.index.repository.now).
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


class TransferLimiter(Protocol):
    """Hands out permission for one blob transfer (the prefetcher's bounded, yielding slots)."""

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]: ...


class _Semaphore:
    def __init__(self, n: int) -> None:
        self._sem = asyncio.Semaphore(n)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._sem:
            yield


@dataclass(frozen=True)
class TierUsage:
    instances: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class TierStatus:
    """``arca tier status``: what each tier holds."""

    hot: TierUsage
    cold: TierUsage
    cold_store: str | None
    """``s3://BUCKET/PREFIX`` or None when no cold tier is configured."""
    cache: TierUsage | None = None
    """Write-through: the files of this node's hot tier (cached copies of cold rows)."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hot": {"instances": self.hot.instances, "bytes": self.hot.bytes},
            "cold": {"instances": self.cold.instances, "bytes": self.cold.bytes},
            "cold_store": self.cold_store,
        }
        if self.cache is not None:
            out["cache"] = {"files": self.cache.instances, "bytes": self.cache.bytes}
        return out

    def describe(self) -> str:
        """The lines ``arca tier status`` prints."""
        cold_where = self.cold_store or "not configured"
        lines = (
            f"hot:  {self.hot.instances} instances, {self.hot.bytes} bytes\n"
            f"cold: {self.cold.instances} instances, {self.cold.bytes} bytes ({cold_where})\n"
        )
        if self.cache is not None:
            lines += (
                f"this node's hot tier (write-through cache and hot rows): "
                f"{self.cache.instances} files, {self.cache.bytes} bytes\n"
            )
        return lines


async def tier_status(conn: AsyncConnection, cold_store: str | None) -> TierStatus:
    """Instances and bytes per tier, from the index (also without a cold tier)."""
    rows = (
        await conn.execute(
            select(
                instances.c.tier, func.count(), func.coalesce(func.sum(instances.c.size), 0)
            ).group_by(instances.c.tier)
        )
    ).all()
    usage = {tier: TierUsage(int(n), int(total)) for tier, n, total in rows}
    return TierStatus(
        hot=usage.get(Tier.HOT.value, TierUsage()),
        cold=usage.get(Tier.COLD.value, TierUsage()),
        cold_store=cold_store,
    )


@dataclass(frozen=True)
class MigrationResult:
    """What one :meth:`TierManager.migrate_study` did."""

    study_uid: str
    target: Tier
    moved: int = 0
    bytes: int = 0
    already: int = 0
    """Instances that were on the target tier before."""
    deferred: int = 0
    """Instances left for later (byte budget reached, concurrently changed)."""
    failed: tuple[str, ...] = ()
    """SOPInstanceUIDs whose copy failed verification or whose source copy is missing."""

    @property
    def complete(self) -> bool:
        return not (self.deferred or self.failed)

    def describe(self) -> str:
        """The lines ``arca tier migrate`` prints."""
        lines = [
            f"study {self.study_uid}: {self.moved} instances ({self.bytes} bytes) moved to "
            f"{self.target.value}, {self.already} were there already"
        ]
        if self.deferred:
            lines.append(f"  {self.deferred} changed meanwhile or left for later: run again")
        lines += [
            f"  not moved (copy failed its SHA-256 or is missing): {uid}" for uid in self.failed
        ]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SweepReport:
    """What :meth:`TierManager.sweep` cleaned up."""

    hot_copies_removed: list[str] = field(default_factory=list)
    cold_copies_removed: list[str] = field(default_factory=list)
    cold_orphans_removed: list[str] = field(default_factory=list)
    spool_files_removed: int = 0


@dataclass(frozen=True)
class EvictionReport:
    """What :meth:`TierManager.evict_cache` removed."""

    copies_removed: int = 0
    bytes_freed: int = 0
    stale_removed: int = 0


@dataclass(frozen=True)
class _CachedStudy:
    """A study's folder on this node's hot tier."""

    study_uid: str
    files: list[tuple[str, int, float]]
    """(blob key, size, mtime) of every file."""
    accessed: float
    """Last local access: the newest mtime of the folder tree (reads touch the folder)."""

    @property
    def bytes(self) -> int:
        return sum(size for _, size, _ in self.files)


@dataclass
class _StudyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(frozen=True)
class _Row:
    id: int
    sop_uid: str
    blob_key: str
    sha256: str
    size: int
    tier: str


def _row_columns() -> Select[Any]:
    return select(
        instances.c.id,
        instances.c.sop_uid,
        instances.c.blob_key,
        instances.c.sha256,
        instances.c.size,
        instances.c.tier,
    )


def _study_rows(study_uid: str) -> Select[Any]:
    return (
        _row_columns()
        .select_from(
            instances.join(series, instances.c.series_pk == series.c.id).join(
                studies, series.c.study_pk == studies.c.id
            )
        )
        .where(studies.c.study_uid == study_uid)
        .order_by(series.c.series_uid, instances.c.instance_number, instances.c.sop_uid)
    )


class TierManager:
    """Moves a study's blobs between the tiers; owns the policy, the sweep and tier reads."""

    def __init__(
        self,
        settings: StorageSettings,
        *,
        read_engine: AsyncEngine,
        write_engine: AsyncEngine,
        hot: HotFilesystemStore,
        cold: S3BlobStore,
        spool_dir: Path,
        transfer_concurrency: int = 4,
        access_touch_interval: float = 60.0,
    ) -> None:
        self.settings = settings
        self.hot = hot
        self.cold = cold
        self.spool_dir = spool_dir
        self.write_through = settings.write_through
        """Rows name the cold copy from ingest on; the hot tier is this node's cache of it."""
        self._read = read_engine
        self._write = write_engine
        self._default_limiter = _Semaphore(max(1, transfer_concurrency))
        self._touch_interval = access_touch_interval
        self._touched: dict[str, float] = {}
        self._study_locks: dict[str, _StudyLock] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._fetches: dict[str, _ColdFetch] = {}
        self._hot_writes: dict[str, asyncio.Task[None]] = {}
        self._kept: dict[str, str] = {}
        """Blob keys (-> StudyInstanceUID) whose kept hot copy awaits its flip."""
        self._flusher: asyncio.Task[None] | None = None
        self.cold_read_hook: Callable[[str, BlobReader], BlobReader] | None = None
        """Called with the StudyInstanceUID and the reader whenever a cold instance is opened;
        returns the reader to hand out (the prefetcher recalls the study in the background
        and tracks the live read)."""

    # -- status -----------------------------------------------------------------------------

    async def status(self) -> TierStatus:
        async with self._db(self._read) as conn:
            status = await tier_status(conn, str(self.cold.location))
        if not self.write_through:
            return status
        local = await asyncio.to_thread(_cached_studies, self.hot.root)
        files = sum(len(s.files) for s in local)
        return dataclasses.replace(status, cache=TierUsage(files, sum(s.bytes for s in local)))

    # -- reads ------------------------------------------------------------------------------

    async def open_blob(self, location: InstanceLocation) -> BlobReader:
        """Open on the tier the plan names; if a migration moved the blob since the plan was
        made, open it where the index says it is now. Cold reads are verified against the
        SHA-256 recorded at ingest and ask for the study to be recalled."""
        self.touch(location.study_uid)
        if location.tier is Tier.COLD and location.blob_key not in self._fetches:
            # Recalled (or prefetched) since the plan was made? A hot copy is always complete
            # (temp file + rename) and was verified before it was written, so it may serve.
            # (A fetch in flight is joined instead, see _copy_to_hot for why in this order.)
            with contextlib.suppress(NotFound):
                return await self.hot.open(location.blob_key)
        try:
            return await self._open_on(location.tier, location)
        except NotFound:
            async with self._db(self._read) as conn:
                tier = (
                    await conn.execute(
                        select(instances.c.tier).where(
                            instances.c.sop_uid == location.sop_instance_uid,
                            instances.c.blob_key == location.blob_key,
                        )
                    )
                ).scalar_one_or_none()
            if tier is None or tier == location.tier.value:
                raise
            return await self._open_on(Tier(tier), location)

    async def _open_on(self, tier: Tier, location: InstanceLocation) -> BlobReader:
        if tier is Tier.HOT:
            return await self.hot.open(location.blob_key)
        recall = self.cold_read_hook is not None
        reader: BlobReader
        if location.size <= FETCH_WHOLE_BYTES:
            # One GET (no HEAD: the index knows the size), shared with the recall and any
            # other reader of this blob; verified before a byte is handed out. With recall on,
            # these very bytes become the hot copy: the recall does not download them again.
            data = await self.fetch_cold(location.blob_key, location.sha256, keep=recall)
            reader = VerifiedBytesReader(data)
            if recall and not self.write_through:
                # (With write-through the kept copy is this node's cache: the row stays cold.)
                self._spawn(self._flip_kept(location))
        else:
            reader = await self.cold.open(location.blob_key, expected_sha256=location.sha256)
            if recall:
                reader = _KeepingReader(reader, self, location)
        if self.cold_read_hook is not None:
            # Recall is on: ask for the rest of the study (and track the live read).
            reader = self.cold_read_hook(location.study_uid, reader)
        return reader

    # -- shared cold fetches ----------------------------------------------------------------

    def fetch_cold(self, key: str, sha256: str, *, keep: bool) -> Awaitable[bytes]:
        """The verified bytes of cold blob ``key``, fetched by one GET however many readers
        and recalls ask for it at once. With ``keep`` (any asker's), the bytes are then
        written as the hot copy (temp file, fsync, rename; the index still says cold until a
        recall flips it, which is a valid state of the crash-safety table).

        Raises NotFound, CorruptBlob (SHA-256 mismatch), StoreUnavailable.
        """
        entry = self._fetches.get(key)
        if entry is None:
            entry = _ColdFetch(self._spawn(self._get_verified(key, sha256)))
            self._fetches[key] = entry
            entry.task.add_done_callback(functools.partial(self._fetched, key, entry))
        entry.keep = entry.keep or keep
        # Shielded: a reader that goes away must not cancel the GET the others wait for.
        return asyncio.shield(entry.task)

    async def _get_verified(self, key: str, sha256: str) -> bytes:
        data = await self.cold.get(key)
        if await _sha256_hex(data) != sha256:
            raise CorruptBlob(f"cold blob {key} fails its SHA-256")
        return data

    def _fetched(self, key: str, entry: _ColdFetch, task: asyncio.Task[bytes]) -> None:
        # Stays registered until its hot copy is written, so a reader arriving meanwhile
        # (hot file not yet renamed into place) joins it instead of downloading again.
        if task.cancelled() or task.exception() is not None or not entry.keep:
            self._forget_fetch(key, entry)
            return
        write = self.write_hot(key, task.result())
        write.add_done_callback(lambda _: self._forget_fetch(key, entry))

    async def _flip_kept(self, location: InstanceLocation) -> None:
        """Once the hot copy a client's cold read kept is written, flip its row (batched with
        other kept copies: one index transaction and one bulk delete per batch)."""
        write = self._hot_writes.get(location.blob_key)
        if write is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(write)
        self._kept[location.blob_key] = location.study_uid
        if self._flusher is None:
            self._flusher = self._spawn(self._flush_kept())

    async def _flush_kept(self) -> None:
        try:
            await asyncio.sleep(0.02)  # let the rest of a batch of reads arrive
            while self._kept:
                batch = list(itertools.islice(self._kept.items(), _BATCH))
                for key, _ in batch:
                    del self._kept[key]
                # A recall running for the study flips these rows itself.
                keys = [key for key, study in batch if not self.is_busy(study)]
                if not keys:
                    continue
                async with self._db(self._read) as conn:
                    found = (
                        await conn.execute(
                            _row_columns().where(
                                instances.c.blob_key.in_(keys),
                                instances.c.tier == Tier.COLD.value,
                            )
                        )
                    ).all()
                rows = [_Row(*r) for r in found]
                present = [r for r in rows if await self.hot.exists(r.blob_key)]
                flipped = await self._flip(present, Tier.HOT)
                await self._delete_sources(flipped, Tier.HOT)
        except StorageError as exc:
            log.warning("could not flip kept hot copies: %s", exc)
        finally:
            self._flusher = None

    def _forget_fetch(self, key: str, entry: _ColdFetch) -> None:
        if self._fetches.get(key) is entry:
            del self._fetches[key]

    def write_hot(self, key: str, data: bytes) -> asyncio.Task[None]:
        """Write verified bytes as the hot copy of ``key`` (once, however many ask)."""
        task = self._hot_writes.get(key)
        if task is None:
            task = self._spawn(self._write_hot(key, data))
            self._hot_writes[key] = task

            def done(t: asyncio.Task[None]) -> None:
                if self._hot_writes.get(key) is t:
                    del self._hot_writes[key]
                if not t.cancelled() and (exc := t.exception()) is not None:
                    log.warning("could not keep the hot copy of %s: %s", key, exc)

            task.add_done_callback(done)
        return task

    async def _write_hot(self, key: str, data: bytes) -> None:
        if await self.hot.exists(key):
            return  # hot copies are complete and were verified before they were written
        await asyncio.to_thread(self.spool_dir.mkdir, parents=True, exist_ok=True)
        spooled = self.spool_dir / f"arca-cold-read-{os.urandom(8).hex()}.part"
        try:
            await asyncio.to_thread(_write_file, spooled, data)
            # put_file fsyncs and renames into place, then removes the spooled file.
            await self.hot.put_file(key, spooled)
        finally:
            await asyncio.to_thread(spooled.unlink, True)

    async def keep_streamed_copy(self, location: InstanceLocation, spooled: Path) -> None:
        """Make a verified, fully streamed cold blob (in ``spooled``) the hot copy: put it on
        the hot tier, flip the row, delete the cold copy (the same steps as a recall, so the
        same crash safety). The spooled file is consumed."""
        try:
            async with self._default_limiter.slot():
                await self._keep(location, spooled)
        except StorageError as exc:
            log.warning("could not keep the streamed copy of %s: %s", location.blob_key, exc)
        finally:
            await asyncio.to_thread(spooled.unlink, True)

    async def _keep(self, location: InstanceLocation, spooled: Path) -> None:
        if not await self.hot.exists(location.blob_key):
            await self.hot.put_file(location.blob_key, spooled)
        if self.write_through:
            return  # a cached copy: the row keeps naming the cold copy
        async with self._db(self._read) as conn:
            found = (
                await conn.execute(
                    _row_columns().where(
                        instances.c.sop_uid == location.sop_instance_uid,
                        instances.c.blob_key == location.blob_key,
                    )
                )
            ).one_or_none()
        if found is not None:
            flipped = await self._flip([_Row(*found)], Tier.HOT)
            await self._delete_sources(flipped, Tier.HOT)

    async def study_blobs(self, study_uid: str) -> list[tuple[str, int, Tier]]:
        """(blob key, size, tier) of the study's instances in retrieve order."""
        async with self._db(self._read) as conn:
            rows = [_Row(*r) for r in (await conn.execute(_study_rows(study_uid))).all()]
        return [(r.blob_key, r.size, Tier(r.tier)) for r in rows]

    def touch(self, study_uid: str) -> None:
        """Record an access to the study (at most once per interval, in the background)."""
        moment = time.monotonic()
        last = self._touched.get(study_uid)
        if last is not None and moment - last < self._touch_interval:
            return
        self._touched[study_uid] = moment
        if len(self._touched) > 10_000:
            self._touched = {study_uid: moment}
        self._spawn(self._touch(study_uid))

    async def _touch(self, study_uid: str) -> None:
        if self.write_through:
            # This node's own record of use, for its cache eviction (the index's
            # last_access_at is shared by every node).
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.utime, self.hot.root / study_uid)
        try:
            async with self._db(self._write, begin=True) as conn:
                await conn.execute(
                    update(studies)
                    .where(studies.c.study_uid == study_uid)
                    .values(last_access_at=_stamp(_now()))
                )
        except StorageError as exc:
            log.warning("could not record access to study %s: %s", study_uid, exc)

    # -- migration --------------------------------------------------------------------------

    async def migrate_study(
        self,
        study_uid: str,
        to: Tier | str,
        *,
        max_bytes: int | None = None,
        limiter: TransferLimiter | None = None,
    ) -> MigrationResult:
        """Move the study's instances to tier ``to`` (``arca tier migrate``).

        Raises NotFound for an unknown study, StoreUnavailable when a tier or the index cannot
        be reached (what was moved stays moved; run again to finish). ``max_bytes`` stops
        after that many bytes were copied (the prefetcher's budget).
        """
        target = Tier(to)
        entry = self._study_locks.get(study_uid)
        if entry is None:
            entry = self._study_locks[study_uid] = _StudyLock()
        entry.users += 1
        try:
            # One migration of a study at a time in this process (policy, prefetch and CLI
            # may ask at once); other nodes are kept honest by the row locks.
            async with entry.lock:
                return await self._migrate(study_uid, target, max_bytes, limiter)
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._study_locks[study_uid]

    def is_busy(self, study_uid: str) -> bool:
        return study_uid in self._study_locks

    async def _migrate(
        self,
        study_uid: str,
        target: Tier,
        max_bytes: int | None,
        limiter: TransferLimiter | None,
    ) -> MigrationResult:
        async with self._db(self._read) as conn:
            rows = [_Row(*r) for r in (await conn.execute(_study_rows(study_uid))).all()]
        if not rows:
            raise NotFound(f"no study {study_uid}")
        todo = [r for r in rows if r.tier != target.value]
        already = len(rows) - len(todo)
        if max_bytes is not None:
            budgeted: list[_Row] = []
            spent = 0
            for row in todo:
                if spent + row.size > max_bytes:
                    break
                budgeted.append(row)
                spent += row.size
            todo = budgeted
        deferred = len(rows) - already - len(todo)
        copy = self._copy_to_cold if target is Tier.COLD else self._copy_to_hot
        # With write-through, bringing a study "hot" fills this node's cache: other nodes
        # read the same rows, so they keep naming the cold copy.
        cache_only = self.write_through and target is Tier.HOT
        gate = limiter or self._default_limiter
        moved: list[_Row] = []
        failed: list[str] = []

        async def one(row: _Row) -> _Row | None:
            async with gate.slot():
                try:
                    await copy(row)
                except (CorruptBlob, NotFound) as exc:
                    log.error("not migrating %s to %s: %s", row.sop_uid, target.value, exc)
                    failed.append(row.sop_uid)
                    return None
            return row

        # Every copy is queued at once (the limiter bounds how many run) and flipped in
        # batches as they complete in order, so copying never waits for a flip.
        copies = [asyncio.ensure_future(one(r)) for r in todo]
        try:
            for start in range(0, len(copies), _BATCH):
                batch = copies[start : start + _BATCH]
                copied = [r for r in await asyncio.gather(*batch) if r is not None]
                if cache_only:
                    moved += copied
                    continue
                flipped = await self._flip(copied, target)
                await self._delete_sources(flipped, target)
                moved += flipped
                deferred += len(copied) - len(flipped)
        finally:
            for task in copies:
                task.cancel()
            await asyncio.gather(*copies, return_exceptions=True)
        return MigrationResult(
            study_uid,
            target,
            moved=len(moved),
            bytes=sum(r.size for r in moved),
            already=already,
            deferred=deferred,
            failed=tuple(failed),
        )

    async def _copy_to_cold(self, row: _Row) -> None:
        await self.put_cold_verified(row.blob_key, row.sha256)

    async def put_cold_verified(self, key: str, sha256: str) -> None:
        """Upload the hot copy of ``key`` to the cold tier and read it back: only bytes that
        hash to the ingest SHA-256 may stand for the instance (S3 ETags are not content
        hashes for multipart uploads). A bad hot copy is caught here too. Raises CorruptBlob
        (the cold copy is removed again), NotFound, StoreUnavailable."""
        await self.cold.put_file(key, self.hot.path_of(key))
        if await self.cold.sha256(key) != sha256:
            await self.cold.delete(key)
            raise CorruptBlob(f"cold copy of {key} does not match its SHA-256")

    async def _copy_to_hot(self, row: _Row) -> None:
        # Joins a fetch in flight before looking at the hot tier: looking first could miss a
        # copy that a finishing fetch renames into place meanwhile, and download it again.
        if row.blob_key not in self._fetches and await self.hot.exists(row.blob_key):
            # Already there (a client's cold read kept its bytes, or a crash left the copy):
            # hot copies are complete and were verified before they were written.
            return
        if row.size > FETCH_WHOLE_BYTES:
            await asyncio.to_thread(self.spool_dir.mkdir, parents=True, exist_ok=True)
            spooled = await self.cold.download(
                row.blob_key, self._spool_path(row), expected_sha256=row.sha256
            )
            # put_file fsyncs and renames into place, then removes the spooled file.
            await self.hot.put_file(row.blob_key, spooled)
            return
        # The same GET a client's cold read of this blob uses (joined, never repeated).
        data = await self.fetch_cold(row.blob_key, row.sha256, keep=True)
        await asyncio.shield(self.write_hot(row.blob_key, data))

    def _spool_path(self, row: _Row) -> Path:
        return self.spool_dir / f"arca-cold-{row.id}-{os.urandom(6).hex()}.part"

    async def _copy_exists(self, tier: Tier, key: str) -> bool:
        return await (self.cold if tier is Tier.COLD else self.hot).exists(key)

    async def _flip(self, rows: Sequence[_Row], target: Tier) -> list[_Row]:
        """Point the rows at ``target`` where they still name the source copy we copied and
        the target copy is present; returns the rows flipped. One transaction."""
        if not rows:
            return []
        by_id = {r.id: r for r in rows}
        flipped: list[_Row] = []
        async with self._db(self._write, begin=True) as conn:
            current = await self._lock_rows(conn, list(by_id))
            for row_id, tier, key in current:
                row = by_id[row_id]
                if tier == target.value or key != row.blob_key:
                    continue  # changed under us (replaced, or moved by someone else)
                if not await self._copy_exists(target, key):
                    continue  # a sweep removed the copy meanwhile; the next run copies again
                await conn.execute(
                    update(instances).where(instances.c.id == row_id).values(tier=target.value)
                )
                flipped.append(row)
        return flipped

    async def _delete_sources(self, rows: Sequence[_Row], target: Tier) -> None:
        """Delete the source copies of rows that (still) name ``target``, under row locks."""
        if not rows:
            return
        source = Tier.HOT if target is Tier.COLD else Tier.COLD
        by_id = {r.id: r for r in rows}
        async with self._db(self._write, begin=True) as conn:
            doomed = [
                key
                for row_id, tier, key in await self._lock_rows(conn, list(by_id))
                if tier == target.value and key == by_id[row_id].blob_key
            ]
            if source is Tier.COLD:
                await self.cold.delete_many(doomed)  # one DeleteObjects request per batch
            else:
                for key in doomed:
                    await self._delete_copy(source, key)

    async def _delete_copy(self, tier: Tier, key: str) -> None:
        await (self.cold if tier is Tier.COLD else self.hot).delete(key)

    @staticmethod
    async def _lock_rows(conn: AsyncConnection, ids: list[int]) -> list[tuple[int, str, str]]:
        rows = (
            await conn.execute(
                select(instances.c.id, instances.c.tier, instances.c.blob_key)
                .where(instances.c.id.in_(ids))
                .order_by(instances.c.id)
                .with_for_update()
            )
        ).all()
        return [(int(i), str(t), str(k)) for i, t, k in rows]

    # -- policy -----------------------------------------------------------------------------

    async def policy_candidates(self, now: datetime | None = None) -> list[str]:
        """Studies the policy would move cold now, in the order it would move them."""
        moment = now or _now()
        cutoff = _stamp(moment - timedelta(days=self.settings.migrate_after_days))
        hot_bytes = func.sum(instances.c.size).label("hot_bytes")
        query = (
            select(studies.c.study_uid, studies.c.last_access_at, hot_bytes)
            .select_from(
                studies.join(series, series.c.study_pk == studies.c.id).join(
                    instances, instances.c.series_pk == series.c.id
                )
            )
            .where(instances.c.tier == Tier.HOT.value)
            .group_by(studies.c.id, studies.c.study_uid, studies.c.last_access_at)
            .order_by(studies.c.last_access_at.is_not(None), studies.c.last_access_at)
        )
        async with self._db(self._read) as conn:
            lru = (await conn.execute(query)).all()
        chosen = [uid for uid, accessed, _ in lru if accessed is None or accessed < cutoff]
        high = self.settings.hot_high_watermark_bytes
        if high is not None:
            total = sum(int(b) for _, _, b in lru)
            if total > high:
                goal = int(high * _LOW_WATERMARK)
                total -= sum(int(b) for uid, _, b in lru if uid in set(chosen))
                for uid, _, size in lru:
                    if total <= goal:
                        break
                    if uid not in chosen:
                        chosen.append(uid)
                        total -= int(size)
        return [uid for uid in chosen if not self.is_busy(uid)]

    async def run_policy(self, now: datetime | None = None) -> list[MigrationResult]:
        """One round of the placement policy. StoreUnavailable stops the round (and
        propagates); what moved stays moved and the next round carries on. With
        write-through, the round then trims this node's cache (:meth:`evict_cache`)."""
        results: list[MigrationResult] = []
        for study_uid in await self.policy_candidates(now):
            try:
                results.append(await self.migrate_study(study_uid, Tier.COLD))
            except NotFound:
                continue  # deleted meanwhile
        if self.write_through:
            await self.evict_cache(now)
        return results

    # -- the node-local cache (write-through) -----------------------------------------------

    async def evict_cache(
        self, now: datetime | None = None, *, grace_seconds: float = 900.0
    ) -> EvictionReport:
        """Drop cached hot copies of cold rows: whole studies this node has not read for
        ``migrate_after_days``, then the least recently read ones while the hot tier holds
        more than ``hot_high_watermark_bytes`` (down to 90% of it). A copy is removed only
        under a lock of its row that still names the cold tier, so a hot row's file (the
        only copy of an instance stored before write-through was on) is never touched.
        Files no row names, older than ``grace_seconds`` (caches of instances deleted or
        replaced through another node), are removed too."""
        moment = (now or _now()).timestamp()
        local = await asyncio.to_thread(_cached_studies, self.hot.root)
        keys = [key for study in local for key, _, _ in study.files]
        tier_of = await self._rows_of(keys)
        stale = [
            key
            for study in local
            for key, _, mtime in study.files
            if key not in tier_of and mtime <= moment - grace_seconds
        ]
        for key in stale:
            await self.hot.delete(key)
        cutoff = moment - self.settings.migrate_after_days * 86400
        chosen = [s for s in local if s.accessed < cutoff]
        high = self.settings.hot_high_watermark_bytes
        total = sum(s.bytes for s in local)
        if high is not None and total > high:
            goal = int(high * _LOW_WATERMARK)
            total -= sum(s.bytes for s in chosen)
            for study in sorted(local, key=lambda s: s.accessed):
                if total <= goal:
                    break
                if study.accessed >= cutoff:  # (older ones are chosen already)
                    chosen.append(study)
                    total -= study.bytes
        removed = 0
        freed = 0
        for study in chosen:
            if self.is_busy(study.study_uid):
                continue  # being cached right now
            cached = [
                (tier_of[key][0], key, size)
                for key, size, _ in study.files
                if key in tier_of and tier_of[key][1] == Tier.COLD.value
            ]
            for start in range(0, len(cached), _BATCH):
                batch = cached[start : start + _BATCH]
                size_of = {key: size for _, key, size in batch}
                async with self._db(self._write, begin=True) as conn:
                    locked = await self._lock_rows(conn, [row_id for row_id, _, _ in batch])
                    for _, tier, key in locked:
                        if tier == Tier.COLD.value and key in size_of:
                            await self.hot.delete(key)
                            removed += 1
                            freed += size_of[key]
        if removed or stale:
            log.info(
                "cache eviction removed %d cached copies (%d bytes) of %d studies and %d stale "
                "files",
                removed,
                freed,
                len(chosen),
                len(stale),
            )
        return EvictionReport(removed, freed, len(stale))

    # -- crash recovery ---------------------------------------------------------------------

    async def sweep(self, grace_seconds: float = 900.0) -> SweepReport:
        """Remove copies the index does not name (left by a crash mid-migration).

        Only copies older than ``grace_seconds`` are touched, so a migration running now on
        another node keeps its fresh copies (deleting them would be safe, just wasteful).
        """
        report = SweepReport()
        horizon = time.time() - grace_seconds
        # Page by page (one S3 listing page, one index look-up of its keys): constant memory
        # for a bucket of any size.
        async for page in self.cold.iter_object_pages():
            stale = [key for key, _size, mtime in page if mtime <= horizon]
            tier_of = await self._rows_of(stale)
            for key in stale:
                entry = tier_of.get(key)
                if entry is None:
                    await self.cold.delete(key)
                    report.cold_orphans_removed.append(key)
                elif entry[1] == Tier.HOT.value and await self._delete_if_row_is(
                    entry[0], key, Tier.HOT, Tier.COLD
                ):
                    report.cold_copies_removed.append(key)

        if not self.write_through:  # (with write-through, hot copies of cold rows are the cache)
            # This node's hot files (bounded by its disk), not every row of the index.
            local = await asyncio.to_thread(_cached_studies, self.hot.root)
            stale = [key for s in local for key, _size, mtime in s.files if mtime <= horizon]
            for key, (row_id, tier) in (await self._rows_of(stale)).items():
                if tier == Tier.COLD.value and await self._delete_if_row_is(
                    row_id, key, Tier.COLD, Tier.HOT
                ):
                    report.hot_copies_removed.append(key)

        removed = await asyncio.to_thread(_clean_spool, self.spool_dir, horizon)
        if report.hot_copies_removed or report.cold_copies_removed or removed:
            log.info(
                "tier sweep removed %d hot and %d cold leftover copies, %d cold orphans",
                len(report.hot_copies_removed),
                len(report.cold_copies_removed),
                len(report.cold_orphans_removed),
            )
        return SweepReport(
            report.hot_copies_removed,
            report.cold_copies_removed,
            report.cold_orphans_removed,
            removed,
        )

    async def _rows_of(self, keys: list[str]) -> dict[str, tuple[int, str]]:
        """Blob key -> (row id, tier) of the rows that name ``keys`` (a query per
        _LOOKUP_BATCH keys)."""
        found: dict[str, tuple[int, str]] = {}
        for start in range(0, len(keys), _LOOKUP_BATCH):
            chunk = keys[start : start + _LOOKUP_BATCH]
            async with self._db(self._read) as conn:
                rows = (
                    await conn.execute(
                        select(instances.c.id, instances.c.blob_key, instances.c.tier).where(
                            instances.c.blob_key.in_(chunk)
                        )
                    )
                ).all()
            found.update({str(k): (int(i), str(t)) for i, k, t in rows})
        return found

    async def _delete_if_row_is(self, row_id: int, key: str, named: Tier, copy: Tier) -> bool:
        async with self._db(self._write, begin=True) as conn:
            locked = await self._lock_rows(conn, [row_id])
            if not locked or locked[0][1] != named.value or locked[0][2] != key:
                return False
            if not await self._copy_exists(named, key):
                # The named copy is gone: keep the other one (verify reports the row).
                return False
            await self._delete_copy(copy, key)
            return True

    # -- plumbing ---------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @contextlib.asynccontextmanager
    async def _db(self, engine: AsyncEngine, *, begin: bool = False) -> AsyncIterator[Any]:
        async with index_engine.connect(engine, begin=begin) as conn:
            yield conn


@dataclass
class _ColdFetch:
    """One in-flight GET of a cold blob (see TierManager.fetch_cold)."""

    task: asyncio.Task[bytes]
    keep: bool = False


class VerifiedBytesReader:
    """A BlobReader over a whole cold blob already fetched and checked against its SHA-256."""

    local_path: Path | None = None

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    async def read_range(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        return self._data[offset : offset + length]

    async def iter_chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        for start in range(0, self.size, chunk_size):
            yield self._data[start : start + chunk_size]

    async def read_all(self) -> bytes:
        return self._data

    async def close(self) -> None:
        self._data = b""


async def _sha256_hex(data: bytes) -> str:
    # hashlib releases the GIL for large inputs: in a thread, the loop keeps serving.
    if len(data) < 1 << 20:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())


class _KeepingReader:
    """A cold BlobReader that spools what it streams; once a whole blob has been read and
    passed its SHA-256 check, the spooled bytes become the hot copy in the background, so
    the recall of the study does not download that blob again."""

    def __init__(self, inner: BlobReader, tiers: TierManager, location: InstanceLocation) -> None:
        self._inner = inner
        self._tiers = tiers
        self._location = location
        self.size = inner.size
        self.local_path: Path | None = None

    async def read_range(self, offset: int, length: int) -> bytes:
        return await self._inner.read_range(offset, length)

    async def read_all(self) -> bytes:
        data = await self._inner.read_all()  # raises CorruptBlob before returning bad bytes
        spooled = self._spool_path()
        await asyncio.to_thread(_write_file, spooled, data)
        self._tiers._spawn(self._tiers.keep_streamed_copy(self._location, spooled))
        return data

    async def iter_chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        spooled = self._spool_path()
        fh = await asyncio.to_thread(open, spooled, "wb")
        complete = False
        try:
            # The inner reader holds its last chunk back until the whole blob hashed right.
            async for chunk in self._inner.iter_chunks(chunk_size):
                await asyncio.to_thread(fh.write, chunk)
                yield chunk
            complete = True
        finally:
            await asyncio.to_thread(fh.close)
            if complete:
                self._tiers._spawn(self._tiers.keep_streamed_copy(self._location, spooled))
            else:
                await asyncio.to_thread(spooled.unlink, True)

    async def close(self) -> None:
        await self._inner.close()

    def _spool_path(self) -> Path:
        self._tiers.spool_dir.mkdir(parents=True, exist_ok=True)
        return self._tiers.spool_dir / f"arca-cold-read-{os.urandom(8).hex()}.part"


def _cached_studies(root: Path) -> list[_CachedStudy]:
    """Every study folder of the hot tier with its files (keys relative to ``root``)."""
    found: list[_CachedStudy] = []
    if not root.is_dir():
        return found
    for entry in os.scandir(root):
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
            continue  # the hot tier's own temp folder
        files: list[tuple[str, int, float]] = []
        with contextlib.suppress(FileNotFoundError):
            newest = entry.stat().st_mtime
            for dirpath, _dirs, names in os.walk(entry.path):
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.stat(dirpath).st_mtime)
                for name in names:
                    path = os.path.join(dirpath, name)
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(path)
                        files.append((os.path.relpath(path, root), st.st_size, st.st_mtime))
                        newest = max(newest, st.st_mtime)
            found.append(_CachedStudy(entry.name, files, newest))
    return found


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _clean_spool(spool: Path, horizon: float) -> int:
    removed = 0
    if not spool.is_dir():
        return 0
    for entry in spool.glob("arca-cold-*.part"):  # recall downloads and kept client reads
        with contextlib.suppress(FileNotFoundError):
            if entry.stat().st_mtime <= horizon:
                entry.unlink()
                removed += 1
    return removed


class TierPolicyTask:
    """Runs the sweep once, then the placement policy every ``interval_seconds``.

    ``start()`` from the server's start-up, ``await stop()`` at shutdown. A cold store that
    cannot be reached pauses the round; the next round resumes.
    """

    def __init__(
        self,
        tiers: TierManager,
        *,
        interval_seconds: float = 300.0,
        sweep_grace_seconds: float = 900.0,
    ) -> None:
        self.tiers = tiers
        self.interval = interval_seconds
        self.sweep_grace = sweep_grace_seconds
        self.rounds = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="arca-tiering")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        swept = False
        while not self._stop.is_set():
            try:
                if not swept:
                    await self.tiers.sweep(self.sweep_grace)
                    swept = True
                await self.tiers.run_policy()
                self.last_error = None
            except StoreUnavailable as exc:
                self.last_error = str(exc)
                log.warning("tier migration paused: %s", exc)
            except Exception as exc:  # keep the task alive; the next round retries
                self.last_error = str(exc)
                log.exception("tier policy round failed")
            self.rounds += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval)
