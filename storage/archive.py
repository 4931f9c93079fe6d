"""The archive facade: the one entry point ``dicomweb`` and ``dimse`` use.

It ties the index and the blob tiers together and owns the three paths of ARCHITECTURE.md:
ingest (:meth:`Archive.ingest`), query (:meth:`Archive.search`), retrieve
(:meth:`Archive.locate`, :meth:`Archive.open_blob`, :meth:`Archive.instance_metadata`).
``server`` constructs it; everything else receives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from config.settings import OverwritePolicy, StorageSettings
from conformance.validation import ANY_IDENTITY, RequestedIdentity
from storage.blobs import BlobReader, BlobStore
from storage.cold import S3BlobStore
from storage.errors import (
    MissingBlob,
    NotFound,
    StorageError,
    StoreUnavailable,
)
from storage.hot import HotFilesystemStore, will_need
from storage.index import engine, repository, results
from storage.ingest import Analysis, prepare, remove_quietly
from storage.ingest_commit import IngestCommitter
from storage.ingest_workers import IngestWorkers
from storage.location_cache import LocationCache
from storage.metadata import resolve_bulkdata
from storage.model import IngestOutcome, InstanceLocation, Tier
from storage.prefetch import Prefetcher
from storage.query import Query, QueryResult
from storage.tiering import MigrationResult, TierManager, TierPolicyTask, TierStatus, tier_status

VERIFY_CONCURRENCY = 8
"""Blobs ``arca verify`` checks at once (cold-tier checks wait on the network)."""
VERIFY_PAGE = 1000
"""Index rows ``arca verify`` reads per query."""
BULKDATA_BASE = "arca-base:"
"""Prefix of every BulkDataURI in precomputed metadata. The HTTP layer replaces
``"arca-base:`` with ``"<base URL of the DICOMweb root>`` when it serves metadata, so the URIs
follow the request's host and Forwarded / X-Forwarded-* headers without re-rendering JSON.
Example stored value: ``arca-base:/studies/1.2/series/3.4/instances/5.6/bulkdata/7FE00010``."""


@dataclass(frozen=True)
class VerifyReport:
    """What ``arca verify`` found."""

    instances_checked: int = 0
    missing: list[str] = field(default_factory=list)
    """SOPInstanceUIDs whose blob is gone."""
    corrupt: list[str] = field(default_factory=list)
    """SOPInstanceUIDs whose blob fails its SHA-256."""
    orphans: list[str] = field(default_factory=list)
    """Blob keys no index row names (e.g. left by a crash between blob and commit)."""
    bad_cache: list[str] = field(default_factory=list)
    """Write-through: SOPInstanceUIDs whose cached hot copy failed its SHA-256 and was
    removed (the cold copy, which the row names, is intact; the next read caches it again)."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt)


class ArchiveService(Protocol):
    """What the service layers (dicomweb, dimse) may call. Implemented by storage.Archive."""

    async def ingest(
        self, path: Path, *, requested: RequestedIdentity = ANY_IDENTITY
    ) -> IngestOutcome:
        """Store the Part-10 file (or bare data set) at ``path``.

        The file is consumed (moved into the hot tier or deleted). Parses the header once,
        validates, writes the blob durably, then commits the index rows, the QIDO attributes,
        the precomputed DICOM JSON metadata and the frame spans in one transaction.

        Raises IngestRejected (with a StowFailure: CANNOT_UNDERSTAND for files that do not
        parse or lack Study/Series/SOP Instance UIDs, SOP_CLASS_NOT_SUPPORTED,
        DATASET_DOES_NOT_MATCH_SOP_CLASS also when the object is not what ``requested`` says
        (a STOW-RS request's study, a C-STORE request's Affected SOP Class),
        DuplicateInstance), OutOfResources, StoreUnavailable. On any error nothing is visible.
        """
        ...

    async def prepare(self, path: Path, *, requested: RequestedIdentity = ANY_IDENTITY) -> Analysis:
        """The first half of :meth:`ingest`, for callers that commit many at once (STOW-RS):
        parse, validate, fsync the file where it is. Raises as ingest does; on failure the
        file is left for the caller (to name the instance in its answer, then remove)."""
        ...

    async def commit(self, prepared: Sequence[Analysis]) -> list[IngestOutcome | StorageError]:
        """The second half: make the prepared instances durable and visible together (one
        index transaction, each instance succeeding or failing on its own). Consumes every
        prepared file. Per instance the outcome, or the StorageError that refused it."""
        ...

    async def discard(self, prepared: Sequence[Analysis]) -> None:
        """Remove the files of prepared instances that will not be committed."""
        ...

    async def search(self, query: Query) -> QueryResult: ...

    async def locate(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[InstanceLocation]:
        """Retrieve plans, ordered by series then InstanceNumber then SOPInstanceUID.

        Raises NotFound when nothing matches.
        """
        ...

    async def instance_metadata(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[bytes]:
        """Precomputed DICOM JSON objects (UTF-8, one per instance, same order as locate),
        BulkDataURIs prefixed with :data:`BULKDATA_BASE`. Raises NotFound."""
        ...

    async def open_blob(self, location: InstanceLocation) -> BlobReader:
        """Open the instance's bytes on whichever tier holds them. Raises NotFound,
        StoreUnavailable, CorruptBlob (when a verified read fails its checksum)."""
        ...

    def hot_path(self, location: InstanceLocation) -> Path | None:
        """The hot-tier file of ``location`` without any I/O (for zero-hop reads of hot
        blobs), or None when the instance is not on the hot tier. The file may be gone
        (migrated since locate()): callers then fall back to :meth:`open_blob`."""
        ...

    async def read_ahead(self, locations: Sequence[InstanceLocation]) -> None:
        """Start reading these instances' hot files into the page cache and return without
        waiting for the disk (a retrieve asks for the parts it sends next). Best effort."""
        ...

    async def read_bulkdata(self, location: InstanceLocation, path: str) -> bytes:
        """The value of the element a BulkDataURI path names; NotFound for none."""
        ...

    async def delete(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> int:
        """Remove index rows (one transaction) then blobs; returns instances removed.
        Raises NotFound."""
        ...

    async def verify(self, study_uid: str | None = None) -> VerifyReport: ...


class Archive:
    """The archive on one index (SQLite | PostgreSQL) and the hot blob tier.

    Constructed by :func:`open_archive`; implements :class:`ArchiveService`.
    """

    def __init__(
        self,
        settings: StorageSettings,
        *,
        read_engine: AsyncEngine,
        write_engine: AsyncEngine,
        hot: BlobStore,
        bulkdata_threshold: int,
        cold: S3BlobStore | None = None,
        sqlite_writer: Engine | None = None,
        ingest_workers: IngestWorkers | None = None,
    ) -> None:
        self.settings = settings
        self.ingest_workers = ingest_workers
        """Worker processes that prepare incoming objects; None = the server's threads."""
        self.hot = hot
        self.bulkdata_threshold = bulkdata_threshold
        self._read = read_engine
        self._write = write_engine
        self._ingest_index = engine.IngestIndex(write_engine, sqlite_writer)
        self._locations = LocationCache()
        # The cold tier and its policies (storage.tiering, storage.prefetch); None = hot only.
        self.cold = cold
        self.tiers: TierManager | None = None
        self.prefetcher: Prefetcher | None = None
        self._tier_task: TierPolicyTask | None = None
        if cold is not None:
            if not isinstance(hot, HotFilesystemStore):
                raise TypeError("the cold tier needs the filesystem hot tier")
            self.tiers = TierManager(
                settings,
                read_engine=read_engine,
                write_engine=write_engine,
                hot=hot,
                cold=cold,
                spool_dir=settings.data_dir / "spool",
            )
            self.prefetcher = Prefetcher(
                self.tiers,
                max_concurrency=settings.prefetch_max_concurrency,
                max_bytes=settings.prefetch_max_bytes,
            )
            self.tiers.cold_read_hook = self.prefetcher.on_cold_read

    async def close(self) -> None:
        if self.ingest_workers is not None:
            self.ingest_workers.close()
        await self.stop_tiering()
        if self.prefetcher is not None:
            await self.prefetcher.close()
        if self.tiers is not None:
            await self.tiers.close()
        if self.cold is not None:
            await self.cold.close()
        await self._write.dispose()
        if self._read is not self._write:
            await self._read.dispose()
        self._ingest_index.dispose()

    @property
    def _committer(self) -> IngestCommitter:
        # Built per use: tests swap ``hot`` for a failing one.
        replace = self.settings.overwrite_policy is OverwritePolicy.REPLACE
        return IngestCommitter(
            self.hot,
            self._ingest_index,
            replace=replace,
            delete_blob=self._delete_blob,
            write_through=self.tiers if self.settings.write_through else None,
        )

    # -- ingest ---------------------------------------------------------------------------

    async def ingest(
        self, path: Path, *, requested: RequestedIdentity = ANY_IDENTITY
    ) -> IngestOutcome:
        try:
            analysis = await self.prepare(path, requested=requested)
        except BaseException:
            await asyncio.to_thread(remove_quietly, path)
            raise
        [result] = await self.commit([analysis])
        if isinstance(result, StorageError):
            raise result
        return result

    async def prepare(self, path: Path, *, requested: RequestedIdentity = ANY_IDENTITY) -> Analysis:
        job = functools.partial(
            prepare,
            path,
            bulkdata_threshold=self.bulkdata_threshold,
            bulkdata_base=BULKDATA_BASE,
            requested=requested,
        )
        if self.ingest_workers is not None:
            return await self.ingest_workers.run(job)
        return await asyncio.to_thread(job)

    async def commit(self, prepared: Sequence[Analysis]) -> list[IngestOutcome | StorageError]:
        try:
            return await self._committer.commit(prepared)
        finally:
            # New or replaced instances: the series' cached plans are out of date.
            for analysis in prepared:
                self._locations.forget_series(analysis.study_uid, analysis.series_uid)
            await self.discard(prepared)

    async def discard(self, prepared: Sequence[Analysis]) -> None:
        paths = [a.path for a in prepared if a.path is not None]
        if paths:
            await asyncio.to_thread(_remove_all, paths)

    async def _delete_blob(self, tier: str, key: str) -> None:
        with contextlib.suppress(StorageError):
            await self._store_for(tier).delete(key)
        if self.settings.write_through and tier == Tier.COLD.value:
            # This node's cached copy too; other nodes drop theirs when they trim their
            # caches (TierManager.evict_cache: files no row names).
            with contextlib.suppress(StorageError):
                await self.hot.delete(key)

    def _store_for(self, tier: str) -> BlobStore:
        if tier == Tier.HOT.value:
            return self.hot
        if tier == Tier.COLD.value and self.cold is not None:
            return self.cold
        raise StoreUnavailable(f"no {tier} tier is configured")

    # -- query and retrieve ---------------------------------------------------------------

    async def search(self, query: Query) -> QueryResult:
        async with self._db(self._read) as conn:
            return await results.search(conn, query)

    async def locate(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[InstanceLocation]:
        if series_uid is not None and sop_instance_uid is not None:
            return [await self._locate_instance(study_uid, series_uid, sop_instance_uid)]
        async with self._db(self._read) as conn:
            found = await repository.locate(conn, study_uid, series_uid, sop_instance_uid)
        if self.prefetcher is not None and series_uid is not None and sop_instance_uid is None:
            # A series retrieve (a viewer's first series): bring the rest of the study hot.
            self.prefetcher.request(study_uid)
        return found

    async def _locate_instance(
        self, study_uid: str, series_uid: str, sop_instance_uid: str
    ) -> InstanceLocation:
        """One instance's plan, from its series' plans loaded at once (storage.location_cache:
        a viewer reads a series instance by instance)."""
        hit = self._locations.get(study_uid, series_uid, sop_instance_uid)
        if hit is not None:
            return hit
        async with self._db(self._read) as conn:
            try:
                in_series = await repository.locate(conn, study_uid, series_uid, None)
            except NotFound:
                in_series = []
            self._locations.put_series(study_uid, series_uid, in_series)
            for loc in in_series:
                if loc.sop_instance_uid == sop_instance_uid:
                    return loc
            # Not there: the instance-level query raises the precise NotFound.
            [found] = await repository.locate(conn, study_uid, series_uid, sop_instance_uid)
            return found

    async def instance_metadata(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[bytes]:
        async with self._db(self._read) as conn:
            found = await repository.instance_metadata(
                conn, study_uid, series_uid, sop_instance_uid
            )
        if self.prefetcher is not None:
            # A viewer opening a study asks for its metadata first: prefetch it.
            self.prefetcher.request(study_uid)
        return found

    async def open_blob(self, location: InstanceLocation) -> BlobReader:
        try:
            if self.tiers is not None:
                # Follows a migration that moved the blob since locate(); verifies cold reads
                # against the ingest SHA-256 and recalls the study in the background.
                return await self.tiers.open_blob(location)
            return await self._store_for(location.tier.value).open(location.blob_key)
        except NotFound:
            # Deleted since locate() (a real 404), or lost while still indexed (a fault).
            async with self._db(self._read) as conn:
                still_indexed = await repository.blob_is_named(conn, location.blob_key)
            if not still_indexed:
                raise
            raise MissingBlob(
                f"instance {location.sop_instance_uid} is indexed but its stored object "
                f"{location.blob_key} is missing from the {location.tier.value} tier; "
                "run `arca verify` and restore it from backup"
            ) from None

    def hot_path(self, location: InstanceLocation) -> Path | None:
        if not isinstance(self.hot, HotFilesystemStore):
            return None
        if location.tier is not Tier.HOT and not self.settings.write_through:
            return None
        # With write-through a cold row's hot file is this node's cache: maybe absent, and
        # then the caller opens the blob through the archive (which caches it).
        if self.tiers is not None:
            self.tiers.touch(location.study_uid)
        return self.hot.path_of(location.blob_key)

    async def read_ahead(self, locations: Sequence[InstanceLocation]) -> None:
        paths = [p for p in map(self.hot_path, locations) if p is not None]
        if paths:
            await asyncio.to_thread(will_need, paths)

    async def read_bulkdata(self, location: InstanceLocation, path: str) -> bytes:
        """The value of the element a BulkDataURI's ``path`` names (see storage.metadata).

        Raises NotFound for a path that names no binary element of the instance."""
        reader = await self.open_blob(location)
        try:
            if reader.local_path is not None:
                source: Path | io.BytesIO = reader.local_path
            else:
                source = io.BytesIO(await reader.read_all())
            return await asyncio.to_thread(_read_bulkdata, source, path)
        finally:
            await reader.close()

    # -- delete and verify ----------------------------------------------------------------

    async def delete(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> int:
        self._locations.forget_study(study_uid)
        async with self._db(self._write, begin=True) as conn:
            blobs = await repository.delete_instances(conn, study_uid, series_uid, sop_instance_uid)
        self._locations.forget_study(study_uid)  # (and what a read cached meanwhile)
        for tier, key in blobs:
            await self._delete_blob(tier, key)
        return len(blobs)

    async def verify(
        self,
        study_uid: str | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> VerifyReport:
        """Check every blob (of one study) against its SHA-256 and list hot files no row
        names. Walks the index a page at a time (constant memory however large the
        archive), checking up to VERIFY_CONCURRENCY blobs at once; ``progress(checked,
        total)`` after each page."""
        async with self._db(self._read) as conn:
            total = await repository.count_instances(conn, study_uid)
        missing: list[str] = []
        corrupt: list[str] = []
        bad_cache: list[str] = []
        gate = asyncio.Semaphore(VERIFY_CONCURRENCY)

        async def check(sop_uid: str, tier: str, key: str, sha256: str) -> None:
            async with gate:
                store = self._store_for(tier)
                if not await store.exists(key):
                    missing.append(sop_uid)
                elif await _sha256_of(store, key) != sha256:
                    corrupt.append(sop_uid)
                elif (
                    self.settings.write_through
                    and tier == Tier.COLD.value
                    and await self.hot.exists(key)
                    and await _sha256_of(self.hot, key) != sha256
                ):
                    # Reads serve a cached copy without hashing it: a bad one must go.
                    await self.hot.delete(key)
                    bad_cache.append(sop_uid)

        checked = 0
        after = 0
        while True:
            async with self._db(self._read) as conn:
                page = await repository.blob_inventory(
                    conn, study_uid, after_id=after, limit=VERIFY_PAGE
                )
            if not page:
                break
            await asyncio.gather(*(check(*row[1:]) for row in page))
            checked += len(page)
            after = page[-1][0]
            if progress is not None:
                progress(checked, max(total, checked))
        prefix = f"{study_uid}/" if study_uid is not None else ""
        keys = [key async for key in self.hot.iter_keys(prefix)]
        # (named_blobs looks the keys up 500 per query)
        named = await self._ingest_index.run(
            functools.partial(repository.named_blobs, blob_keys=keys), write=False
        )
        orphans = [key for key in keys if key not in named]
        return VerifyReport(checked, sorted(missing), sorted(corrupt), orphans, sorted(bad_cache))

    # -- tiers (storage.tiering) --------------------------------------------------------

    async def tier_status(self) -> TierStatus:
        """``arca tier status``: instances and bytes per tier."""
        if self.tiers is not None:
            return await self.tiers.status()
        async with self._db(self._read) as conn:
            return await tier_status(conn, None)

    async def migrate_study(self, study_uid: str, to: Tier | str) -> MigrationResult:
        """``arca tier migrate --study UID --to cold|hot``. Raises NotFound, StoreUnavailable
        (also when no cold tier is configured)."""
        if self.tiers is None:
            raise StoreUnavailable("no cold tier is configured (storage.cold_store)")
        return await self.tiers.migrate_study(study_uid, to)

    def start_tiering(self, interval_seconds: float = 300.0) -> None:
        """Start the background placement policy (sweep once, then every interval); a no-op
        without a cold tier. The server calls this at start-up; close() stops it."""
        if self.tiers is not None and self._tier_task is None:
            self._tier_task = TierPolicyTask(self.tiers, interval_seconds=interval_seconds)
            self._tier_task.start()

    async def stop_tiering(self) -> None:
        task, self._tier_task = self._tier_task, None
        if task is not None:
            await task.stop()

    # -- plumbing -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _db(self, db: AsyncEngine, *, begin: bool = False) -> AsyncIterator[Any]:
        async with engine.connect(db, begin=begin) as conn:
            yield conn


async def _sha256_of(store: BlobStore, key: str) -> str:
    digest = hashlib.sha256()
    reader = await store.open(key)
    try:
        async for chunk in reader.iter_chunks():
            digest.update(chunk)
    finally:
        await reader.close()
    return digest.hexdigest()


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        remove_quietly(path)


def _read_bulkdata(source: Path | io.BytesIO, path: str) -> bytes:
    ds = dcmread(source, force=True)
    try:
        return resolve_bulkdata(ds, path)
    except KeyError as exc:
        raise NotFound(f"no bulk data at {path}: {exc}") from exc


async def open_archive(settings: StorageSettings, *, bulkdata_threshold: int = 1024) -> Archive:
    """Open (and migrate) the index and the hot tier described by ``settings``."""
    if settings.write_through and not settings.cold_store:
        raise ValueError("storage.write_through needs a cold tier (storage.cold_store)")
    url = settings.resolved_index_url
    write_engine = engine.create_engine(url, immediate=True)
    read_engine = engine.create_engine(url) if engine.is_sqlite(url) else write_engine
    sqlite_writer = engine.create_sqlite_writer(url) if engine.is_sqlite(url) else None
    try:
        await engine.upgrade_engine(write_engine)
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        await write_engine.dispose()
        if read_engine is not write_engine:
            await read_engine.dispose()
        raise engine.index_error(exc) from exc
    hot = HotFilesystemStore(settings.data_dir / "hot")
    cold = None
    if settings.cold_store:
        # A wrong bucket, endpoint or credentials fail here, at start-up, with a clear message.
        cold = S3BlobStore.from_settings(settings, spool_dir=settings.data_dir / "spool")
        try:
            await cold.check()
        except StorageError:
            await cold.close()
            await write_engine.dispose()
            if read_engine is not write_engine:
                await read_engine.dispose()
            raise
    return Archive(
        settings,
        read_engine=read_engine,
        write_engine=write_engine,
        hot=hot,
        bulkdata_threshold=bulkdata_threshold,
        cold=cold,
        sqlite_writer=sqlite_writer,
        ingest_workers=IngestWorkers(settings.ingest_workers)
        if settings.ingest_workers > 0
        else None,
    )


async def upgrade_index(settings: StorageSettings) -> None:
    """``arca db upgrade``: migrate the configured index to the newest schema."""
    try:
        await engine.upgrade_index(settings)
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        raise engine.index_error(exc) from exc
