"""Ingest, part two: make prepared instances durable and visible, many at a time.

A STOW-RS request's instances are prepared (:func:`storage.ingest.prepare`: parsed, validated,
their bytes fsync'd where they were spooled) while the request body is still arriving, then
committed together:

1. one look-up of which SOP Instance UIDs are indexed already (byte-identical ones answer
   "already present", other content under the ``reject`` policy is refused: no blob is
   written for either);
2. the blobs are renamed into the hot tier and each folder is fsync'd once
   (:meth:`storage.hot.HotFilesystemStore.adopt_files`);
   With write-through (several nodes, each with its own hot disk), each blob is then
   uploaded to the cold tier and read back against its SHA-256 before it is indexed, and
   its row names the cold copy: any node can read it, the hot file stays as this node's
   cache;
3. one index transaction for all of them, each instance on its own savepoint
   (:func:`storage.index.repository.index_instances`), so one refused instance leaves nothing
   behind while the others are stored (PS3.18 §10.5);
4. blobs of instances that ended up not indexed are removed again from the hot tier
   (unless a row names them); cold copies are left to the tier sweep.

An instance is visible to queries only once its blob and its row are durable, as before; the
answer (STOW response, C-STORE-RSP) goes out after step 3 commits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import Connection

from conformance.statuses import StowFailure
from storage.blobs import BlobStore
from storage.errors import CorruptBlob, DuplicateInstance, StorageError, StoreUnavailable
from storage.index import repository
from storage.index.engine import IndexConflict, IngestIndex
from storage.ingest import Analysis
from storage.model import IngestOutcome, IngestStatus, Tier

CommitResult = IngestOutcome | StorageError
"""Per instance: what was stored, or why it was not."""


class WriteThrough(Protocol):
    """The cold tier as ingest writes through to it (storage.tiering.TierManager)."""

    async def put_cold_verified(self, key: str, sha256: str) -> None: ...


WRITE_THROUGH_CONCURRENCY = 8
"""Uploads to the cold tier in flight per commit (S3 PUTs are latency-bound)."""


class AdoptingStore(Protocol):
    """A hot tier that takes over already-fsync'd files (storage.hot.HotFilesystemStore)."""

    async def adopt_files(self, items: Sequence[tuple[str, Path]]) -> list[StorageError | None]: ...


def outcome(analysis: Analysis, status: IngestStatus) -> IngestOutcome:
    return IngestOutcome(
        status=status,
        study_uid=analysis.study_uid,
        series_uid=analysis.series_uid,
        sop_instance_uid=analysis.sop_uid,
        sop_class_uid=analysis.sop_class_uid,
        transfer_syntax_uid=analysis.transfer_syntax_uid,
        size=analysis.size,
        sha256=analysis.sha256,
    )


def duplicate(analysis: Analysis) -> DuplicateInstance:
    return DuplicateInstance(
        StowFailure.DUPLICATE_SOP_INSTANCE,
        f"SOPInstanceUID {analysis.sop_uid} is already stored with other content",
    )


class IngestCommitter:
    """Commits prepared instances to the hot tier and the index (see the module docstring)."""

    def __init__(
        self,
        hot: BlobStore,
        index: IngestIndex,
        *,
        replace: bool,
        delete_blob: Callable[[str, str], Awaitable[None]],
        write_through: WriteThrough | None = None,
    ) -> None:
        self.hot = hot
        self.index = index
        self.replace = replace
        self.delete_blob = delete_blob
        """Removes a replaced instance's old blob from its tier (errors suppressed)."""
        self.write_through = write_through
        self.tier = Tier.HOT if write_through is None else Tier.COLD
        """The tier new rows name."""

    async def commit(self, analyses: Sequence[Analysis]) -> list[CommitResult]:
        results: list[CommitResult | None] = [None] * len(analyses)
        uids = [a.sop_uid for a in analyses]
        try:
            existing = await self.index.run(
                lambda conn: repository.find_instances(conn, uids), write=False
            )
        except StorageError as exc:
            # The index cannot be reached (or is full): no instance is stored, each says why.
            return [exc] * len(analyses)
        to_place: list[int] = []
        for i, analysis in enumerate(analyses):
            met = existing.get(analysis.sop_uid)
            if met is not None and met.sha256 == analysis.sha256:
                results[i] = outcome(analysis, IngestStatus.ALREADY_PRESENT)
            elif met is not None and not self.replace:
                results[i] = duplicate(analysis)
            else:
                to_place.append(i)
        placed: list[int] = []
        errors = await self._place([analyses[i] for i in to_place])
        for i, error in zip(to_place, errors, strict=True):
            if error is None:
                placed.append(i)
            else:
                results[i] = error
        if self.write_through is not None and placed:
            uploaded = await self._upload([analyses[i] for i in placed])
            not_uploaded = [i for i, error in zip(placed, uploaded, strict=True) if error]
            for i, error in zip(placed, uploaded, strict=True):
                if error is not None:
                    results[i] = error
            placed = [i for i in placed if i not in set(not_uploaded)]
            if not_uploaded:
                await self._forget([analyses[i].blob_key for i in not_uploaded])
        # A fixed order of the rows each transaction locks: two processes storing the same
        # study on one PostgreSQL then wait for each other instead of deadlocking.
        placed.sort(key=lambda i: (analyses[i].study_uid, analyses[i].series_uid, uids[i]))
        batch = [analyses[i] for i in placed]
        # Shielded: the transaction runs in a worker thread that a cancelled caller cannot
        # stop, so it may still commit after the cancellation. The placed blobs are then left
        # as they are (rows name them, or `arca verify` reports them as orphans); removing
        # them here would leave committed rows without their blobs.
        indexing = asyncio.ensure_future(self._index_with_retry(batch))
        try:
            indexed = await asyncio.shield(indexing)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self._forget([a.blob_key for a in batch])  # the transaction is over
            if not isinstance(exc, StorageError):
                raise
            indexed = [exc] * len(batch)
        forget: list[str] = []
        old_blobs: list[tuple[str, str]] = []
        for i, done in zip(placed, indexed, strict=True):
            analysis = analyses[i]
            if isinstance(done, StorageError):
                results[i] = done
                forget.append(analysis.blob_key)
            elif done.inserted:
                results[i] = outcome(analysis, IngestStatus.STORED)
                if done.met is not None and done.met.blob_key != analysis.blob_key:
                    old_blobs.append((done.met.tier, done.met.blob_key))
            elif done.met is not None:
                # Another writer indexed other content under this SOP Instance meanwhile.
                results[i] = duplicate(analysis)
                forget.append(analysis.blob_key)
            else:
                results[i] = outcome(analysis, IngestStatus.ALREADY_PRESENT)
        if forget:
            await self._forget(forget)
        for tier, key in old_blobs:
            await self.delete_blob(tier, key)
        return [r if r is not None else StoreUnavailable("not committed") for r in results]

    async def _index_with_retry(
        self, batch: list[Analysis]
    ) -> list[repository.Indexed | StorageError]:
        try:
            return await self.index.run(self._index_batch(batch))
        except IndexConflict:
            # Deadlock or a constraint a concurrent writer broke: once more, on fresh rows.
            return await self.index.run(self._index_batch(batch))

    def _index_batch(self, batch: list[Analysis]) -> _IndexBatch:
        return _IndexBatch(batch, self.replace, self.tier)

    async def _place(self, batch: list[Analysis]) -> list[StorageError | None]:
        if not batch:
            return []
        items = [(a.blob_key, _path_of(a)) for a in batch]
        adopt = getattr(self.hot, "adopt_files", None)
        if adopt is not None:
            store: AdoptingStore = self.hot  # type: ignore[assignment]
            return await store.adopt_files(items)
        errors: list[StorageError | None] = []
        for key, path in items:
            try:
                await self.hot.put_file(key, path)
            except StorageError as exc:
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    async def _upload(self, batch: list[Analysis]) -> list[StorageError | None]:
        """Write-through: each placed blob to the cold tier, verified (see the docstring)."""
        assert self.write_through is not None
        cold = self.write_through
        gate = asyncio.Semaphore(WRITE_THROUGH_CONCURRENCY)

        async def one(analysis: Analysis) -> StorageError | None:
            async with gate:
                try:
                    await cold.put_cold_verified(analysis.blob_key, analysis.sha256)
                except CorruptBlob as exc:
                    return StoreUnavailable(f"the cold tier did not keep the bytes sent: {exc}")
                except StorageError as exc:
                    return exc
            return None

        return list(await asyncio.gather(*(one(a) for a in batch)))

    async def _forget(self, keys: list[str]) -> None:
        """Remove blobs we placed but did not index, unless some index row names them."""
        with contextlib.suppress(StorageError):  # if this fails, verify reports the orphans
            named = await self.index.run(
                lambda conn: repository.named_blobs(conn, keys), write=False
            )
            for key in keys:
                if key not in named:
                    await self.hot.delete(key)
            # Cold copies written through are left to the tier sweep (cold objects no row
            # names, once older than its grace period): another node may be committing a row
            # for the very same key (same instance, same bytes) right now, and deleting the
            # object here could remove what its row is about to name.


class _IndexBatch:
    """The index transaction of one commit (a callable of a synchronous Connection)."""

    def __init__(self, batch: list[Analysis], replace: bool, tier: Tier) -> None:
        self.batch = batch
        self.replace = replace
        self.tier = tier

    def __call__(self, conn: Connection) -> list[repository.Indexed | StorageError]:
        if not self.batch:
            return []
        return repository.index_instances(conn, self.batch, self.tier, replace=self.replace)


def _path_of(analysis: Analysis) -> Path:
    if analysis.path is None:
        raise StoreUnavailable(f"instance {analysis.sop_uid} was not prepared")
    return analysis.path
