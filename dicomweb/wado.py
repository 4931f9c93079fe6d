"""WADO-RS (PS3.18 §10.4): instances of a study / series / instance, metadata, and DELETE.

Instances stream as multipart/related; type="application/dicom" straight from the blob store.
Consecutive stored-syntax parts form batches of up to BATCH_BYTES. Where the server offers
ASGI's zero-copy send (server.zero_copy) and every part of a batch has a hot-tier file (the
archive's optional ``hot_path``), the batch goes out as open files, which the server sends by
sendfile(2) without reading them. Other batches are read a batch or two ahead of the one being
written (hot files without a thread hop, others through ``open_blob``). The event loop never
waits for the disk: hot files whose pages are not in memory are read in (or read) by a worker
thread before the loop sends them (storage.hot.in_memory, page_in). When every part is sent
as stored, the body length is known from the index and sent as Content-Length, which spares the
chunked transfer coding's copy of every chunk. Parts over WHOLE_PART_BYTES stream in CHUNK_SIZE
chunks. An instance whose stored transfer syntax the client does not accept goes through the
transcoder; up to ``lookahead`` transcodes run concurrently ahead of the part being sent, so the
parts keep their order while the pool stays busy.

Failures after the response headers are sent cannot change the status (and a Warning header
can no longer be added). The choice made here: an instance that cannot be transcoded
(NoCodec, CorruptPixelData) is left out of the multipart body and logged, the rest is sent;
a storage failure mid-stream (blob gone, checksum mismatch, tier unreachable) aborts the
response, so the client sees a truncated body instead of silently incomplete data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from conformance.transfer_syntaxes import TRANSFER_SYNTAXES
from dicomweb.dicom_json import join_metadata
from dicomweb.dicom_xml import json_to_xml
from dicomweb.errors import HttpError
from dicomweb.file_body import FileStreamingResponse, OpenFile, offers_zero_copy
from dicomweb.media import (
    DICOM,
    DICOM_XML,
    DicomAcceptance,
    NotAcceptable,
    negotiate_dicom,
    negotiate_metadata,
    parse_accept,
)
from dicomweb.multipart import (
    closing_delimiter,
    multipart_content_type,
    new_boundary,
    part_header,
)
from dicomweb.pretranscode import PreTranscoder
from dicomweb.resources import ResourcePath, encoder_check, source_of
from dicomweb.urls import BaseUrl
from storage.archive import ArchiveService
from storage.blobs import BlobReader
from storage.errors import CorruptBlob
from storage.hot import in_memory, page_in
from storage.model import InstanceLocation
from transcoding.errors import TranscodingError
from transcoding.service import TranscoderService

log = logging.getLogger("arca.dicomweb.wado")

CHUNK_SIZE = 1 << 20
WHOLE_PART_BYTES = 4 << 20
"""Parts up to this size are read whole ahead of sending; larger ones stream in CHUNK_SIZE
chunks."""
BATCH_BYTES = 4 << 20
"""Stored-syntax parts are read and written in batches of up to this many bytes."""
READ_AHEAD_PARTS = 32
"""Parts whose hot files the kernel is asked to read (posix_fadvise WILLNEED) ahead of the
part being sent: ~17 MB of CT. A series whose files have left the page cache is then read
from the disk while earlier parts are sent or transcoded, not one file after the other by
the thread or codec worker that needs it."""
BATCHES_AHEAD = 2
"""Native batches fetched ahead of the one being written (memory: about
(BATCHES_AHEAD + 1) * BATCH_BYTES per request)."""
INLINE_READ_BYTES = 2 << 20
"""Hot-tier blobs up to this size are read on the event loop from their local path when
their pages are in memory (storage.hot.in_memory): a page-cache read of a few hundred KiB
costs less than the thread hop of read_range. Pages on the disk are read in a worker thread,
so the loop never waits for the disk. (Frames use it too.)"""

HotPath = Callable[[InstanceLocation], "Path | None"]


class WadoService:
    """Instance retrieval, metadata and deletion endpoints."""

    def __init__(
        self,
        archive: ArchiveService,
        transcoder: TranscoderService | None,
        base_url: BaseUrl,
        lookahead: int = 4,
        pretranscoder: PreTranscoder | None = None,
    ) -> None:
        self.archive = archive
        self.transcoder = transcoder
        self.pretranscoder = pretranscoder
        self.base_url = base_url
        self.lookahead = max(1, lookahead)
        # Optional (additive) archive method: the hot-tier file of a location, without I/O,
        # so a batch opens its files in the same worker thread that reads them.
        self.hot_path: HotPath | None = getattr(archive, "hot_path", None)

    # -- instances ----------------------------------------------------------------------------

    async def retrieve(self, request: Request) -> Response:
        path = ResourcePath.of(request)
        acceptance = negotiate_dicom(
            parse_accept(request.headers.get("accept")), single_part_ok=path.instance is not None
        )
        locations = await self.archive.locate(path.study, path.series, path.instance)
        can_encode = encoder_check(self.transcoder)
        plan = [
            (loc, acceptance.target_for(loc.transfer_syntax_uid, can_encode)) for loc in locations
        ]
        sendable = [(loc, target) for loc, target in plan if target is not None]
        if not sendable:
            raise NotAcceptable(_why_not(acceptance, locations, self.transcoder is not None))
        if self.pretranscoder is not None and path.series is not None:
            self._queue_pretranscode(path, acceptance, sendable)
        for loc, target in plan:
            if target is None:
                log.warning(
                    "%s left out: stored as %s, client accepts %s",
                    loc.sop_instance_uid,
                    loc.transfer_syntax_uid,
                    ", ".join(acceptance.syntaxes),
                )
        if not acceptance.multipart:
            loc, target = sendable[0]
            if self._whole(loc, target):
                data = await self._part_bytes(loc, target)
                return Response(data, media_type=_part_type(target))
            reader = await self.archive.open_blob(loc)
            return StreamingResponse(
                self._blob_chunks(reader),
                media_type=_part_type(target),
                headers={"Content-Length": str(reader.size)},
            )
        boundary = new_boundary()
        syntaxes = {target for _, target in sendable}
        params = {"transfer_syntax": next(iter(syntaxes))} if len(syntaxes) == 1 else {}
        media_type = multipart_content_type(DICOM, boundary, **params)
        # Stored parts from hot-tier files go by the server's sendfile when it offers it.
        zero_copy = self.hot_path is not None and offers_zero_copy(request.scope)
        parts = _PartQueue(self, sendable, boundary, zero_copy)
        # Fetch the first batch before answering, so an error there still gets its status.
        await parts.prime()
        headers = {}
        if parts.content_length is not None:
            headers["Content-Length"] = str(parts.content_length)
        return FileStreamingResponse(
            self._multipart(parts, boundary), media_type=media_type, headers=headers
        )

    def _queue_pretranscode(
        self,
        path: ResourcePath,
        acceptance: DicomAcceptance,
        sendable: list[tuple[InstanceLocation, str]],
    ) -> None:
        """A transcoded series / instance retrieve: the study's other instances go into the
        rendition cache in the same syntax, in the background (dicomweb.pretranscode)."""
        assert self.pretranscoder is not None
        target = next((t for loc, t in sendable if t != loc.transfer_syntax_uid), None)
        if target is None:
            return
        self.pretranscoder.request(
            path.study,
            target,
            asked=acceptance.syntaxes,
            accepts=acceptance.accepts,
            skip=frozenset(loc.sop_instance_uid for loc, _ in sendable),
        )

    def _whole(self, loc: InstanceLocation, target: str) -> bool:
        """Is this part read (or transcoded) whole, ahead of sending, rather than streamed?"""
        return target != loc.transfer_syntax_uid or loc.size <= WHOLE_PART_BYTES

    async def _part_bytes(self, loc: InstanceLocation, target: str) -> bytes:
        if target != loc.transfer_syntax_uid:
            return await self._transcode(loc, target)
        reader = await self.archive.open_blob(loc)
        try:
            if reader.local_path is not None and reader.size <= INLINE_READ_BYTES:
                with open(reader.local_path, "rb") as f:
                    if in_memory(f.fileno(), reader.size):  # else read in a worker thread
                        return f.read()
            return await reader.read_all()
        finally:
            await reader.close()

    async def _read_batch(self, batch: _Batch) -> list[bytes]:
        """The batch's parts, each behind its part header."""
        files: list[Path | None] = [None] * len(batch.locations)
        if self.hot_path is not None:
            files = [self.hot_path(loc) for loc in batch.locations]
        readers: dict[int, BlobReader] = {}
        try:
            # Parts without a known hot-tier file (cold tier, or no hot_path) are opened
            # through the archive, which follows migrations and verifies cold reads.
            missing = [i for i, f in enumerate(files) if f is None]
            opened = await asyncio.gather(
                *(self.archive.open_blob(batch.locations[i]) for i in missing),
                return_exceptions=True,
            )
            for i, r in zip(missing, opened, strict=True):
                if isinstance(r, BaseException):
                    continue
                readers[i] = r
                files[i] = r.local_path
            for r in opened:
                if isinstance(r, BaseException):
                    raise r
            chunks: list[bytes | None] = [None] * len(files)
            local = [(i, f) for i, f in enumerate(files) if f is not None]
            if local:
                # On the loop, like INLINE_READ_BYTES reads: page-cache reads of a few hundred
                # KiB cost less than thread hops, and bytes made on this thread come from the
                # main malloc arena, which reuses freed memory (measured: reading in a worker
                # thread cost ~25% more CPU per image). Files whose pages are not in memory
                # are left to a worker thread: the loop never waits for the disk.
                got, on_disk = _read_files(batch, local, in_memory_only=True)
                if on_disk:
                    more, _ = await asyncio.to_thread(_read_files, batch, on_disk)
                    got.update(more)
                for i, _ in local:
                    chunk = got[i]
                    if chunk is None and i not in readers:
                        # The file moved (migrated to the cold tier) since locate().
                        readers[i] = await self.archive.open_blob(batch.locations[i])
                    chunks[i] = chunk
            for i, reader in readers.items():
                if chunks[i] is None:
                    _check_size(batch.locations[i], reader.size)
                    data = await reader.read_all()
                    _check_size(batch.locations[i], len(data))
                    chunks[i] = batch.headers[i] + data
            return [c for c in chunks if c is not None]
        finally:
            with anyio.CancelScope(shield=True):
                for reader in readers.values():
                    await reader.close()

    @staticmethod
    async def _blob_chunks(blob: BlobReader) -> AsyncIterator[bytes]:
        try:
            async for chunk in blob.iter_chunks(CHUNK_SIZE):
                yield chunk
        finally:
            # Starlette cancels the body on a client disconnect; closing must still run.
            with anyio.CancelScope(shield=True):
                await blob.close()

    async def _transcode(self, loc: InstanceLocation, target: str) -> bytes:
        if self.transcoder is None:  # negotiation never picks a target without one
            raise NotAcceptable("no transcoder is configured")
        # A cached rendition needs no source: skip opening the blob (optional method of the
        # concrete Transcoder).
        cached = getattr(self.transcoder, "cached", None)
        if cached is not None:
            data: bytes | None = await cached(loc.sha256, target)
            if data is not None:
                return data
        source = await source_of(self.archive, loc)
        if self.pretranscoder is None:
            return await self.transcoder.transcode(source, target, cache_key=loc.sha256)
        # Counted as live: background pre-transcodes wait while live ones fill the pool.
        with self.pretranscoder.live():
            return await self.transcoder.transcode(source, target, cache_key=loc.sha256)

    async def _direct_batch(self, batch: _Batch) -> AsyncGenerator[bytes | OpenFile, None]:
        """The batch's parts as part header + open hot-tier file, or header + bytes read
        through the archive for a part with no hot file any more (migrated since locate()).

        sendfile(2) on the event loop must not wait for the disk, so files whose pages are
        not in memory are read in first by a worker thread (storage.hot.page_in)."""
        files: list[OpenFile | None] = []
        try:
            for loc in batch.locations:
                files.append(self._open_hot(loc))
            on_disk = [f for f in files if f is not None and not in_memory(f.fd, f.size)]
            if on_disk:
                # Duplicates: the thread closes them, even after this response is gone.
                await asyncio.to_thread(page_in, [(os.dup(f.fd), f.size) for f in on_disk])
            for i, (head, loc) in enumerate(zip(batch.headers, batch.locations, strict=True)):
                yield head
                opened, files[i] = files[i], None  # the response closes what it is given
                if opened is not None:
                    yield opened
                else:
                    yield await self._part_bytes(loc, loc.transfer_syntax_uid)
        finally:
            for f in files:
                if f is not None:
                    os.close(f.fd)

    def _open_hot(self, loc: InstanceLocation) -> OpenFile | None:
        """The part's hot-tier file, open and its size checked; None if it has none."""
        path = self.hot_path(loc) if self.hot_path is not None else None
        fd = None if path is None else _open_sized(path, loc)
        return None if fd is None else OpenFile(fd, loc.size)

    async def _multipart(self, parts: _PartQueue, boundary: str) -> AsyncIterator[bytes | OpenFile]:
        try:
            for u, unit in enumerate(parts.units):
                if isinstance(unit, _Batch) and parts.is_direct(u):
                    # Closed here, not when collected, if this body is closed mid-batch: it
                    # holds open files.
                    async with contextlib.aclosing(self._direct_batch(unit)) as items:
                        async for item in items:
                            yield item
                    continue
                if isinstance(unit, _Batch):
                    for chunk in await parts.take_batch(u):
                        yield chunk
                    continue
                loc, target = parts.sendable[unit]
                head = part_header(boundary, _part_type(target))
                if self._whole(loc, target):
                    try:
                        data = await parts.take(u)
                    except TranscodingError as exc:
                        log.error("%s left out of the response: %s", loc.sop_instance_uid, exc)
                        continue
                    # One write per small part: header and body together.
                    yield head + data
                    continue
                yield head
                reader = await parts.open(u)
                _check_size(loc, reader.size)
                async for chunk in self._blob_chunks(reader):
                    yield chunk
            yield closing_delimiter(boundary)
        finally:
            with anyio.CancelScope(shield=True):
                await parts.cancel()

    # -- metadata -----------------------------------------------------------------------------

    async def metadata(self, request: Request) -> Response:
        path = ResourcePath.of(request)
        choice = negotiate_metadata(parse_accept(request.headers.get("accept")))
        items = await self.archive.instance_metadata(path.study, path.series, path.instance)
        base = self.base_url(request)
        body = join_metadata(items, base)
        if choice.media_type != DICOM_XML:
            return Response(body, media_type="application/dicom+json")
        # PS3.18 §8.7.4: XML metadata is multipart/related, one part per instance.
        boundary = new_boundary()
        objects = json.loads(body)
        xml = b"".join(part_header(boundary, DICOM_XML) + json_to_xml(o) for o in objects)
        xml += closing_delimiter(boundary)
        return Response(xml, media_type=multipart_content_type(DICOM_XML, boundary))

    # -- delete -------------------------------------------------------------------------------

    async def delete(self, request: Request) -> Response:
        path = ResourcePath.of(request)
        removed = await self.archive.delete(path.study, path.series, path.instance)
        if removed < 0:
            raise HttpError(500, "delete reported a negative count")
        return Response(status_code=204)


def _part_type(syntax: str) -> str:
    return f"{DICOM}; transfer-syntax={syntax}"


def _why_not(acceptance: DicomAcceptance, locations: list[InstanceLocation], coder: bool) -> str:
    stored = sorted({loc.transfer_syntax_uid for loc in locations})
    names = ", ".join(
        f"{uid} ({TRANSFER_SYNTAXES[uid].name})" if uid in TRANSFER_SYNTAXES else uid
        for uid in stored
    )
    asked = ", ".join(acceptance.syntaxes) or "none"
    if not coder:
        return f"stored as {names}; the client accepts {asked} and no transcoder is configured"
    return f"stored as {names}; the client accepts {asked} and no codec can produce those"


@dataclass
class _Batch:
    """Consecutive stored-syntax parts read in one worker-thread call; ``nbytes`` counts
    their headers and bytes."""

    locations: list[InstanceLocation]
    headers: list[bytes]
    nbytes: int


def _read_files(
    batch: _Batch, files: list[tuple[int, Path]], *, in_memory_only: bool = False
) -> tuple[dict[int, bytes | None], list[tuple[int, Path]]]:
    """Header + bytes of each file by its index in the batch (None: the file is gone), and
    the files left unread because ``in_memory_only`` and their pages are not in memory.

    Each part is one pread and one concatenation: same-sized bytes objects reuse the
    allocator's freed memory, where one big zeroed buffer per batch page-faults afresh
    (measured slower)."""
    out: dict[int, bytes | None] = {}
    on_disk: list[tuple[int, Path]] = []
    for i, path in files:
        loc = batch.locations[i]
        fd = _open_sized(path, loc)
        if fd is None:
            out[i] = None
            continue
        try:
            size = loc.size
            if in_memory_only and not in_memory(fd, size):
                on_disk.append((i, path))
                continue
            data = os.pread(fd, size, 0)
            while len(data) < size:
                more = os.pread(fd, size - len(data), len(data))
                if not more:
                    raise CorruptBlob(f"{loc.sop_instance_uid}: blob shorter than its size")
                data += more
        finally:
            os.close(fd)
        out[i] = batch.headers[i] + data
    return out, on_disk


def _open_sized(path: Path, loc: InstanceLocation) -> int | None:
    """The file's descriptor, its size checked against the index; None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        _check_size(loc, os.fstat(fd).st_size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_size(loc: InstanceLocation, size: int) -> None:
    # The body length (and each batch's layout) comes from the index; a blob of another size
    # is a storage failure, which aborts the stream (see the module docstring).
    if size != loc.size:
        raise CorruptBlob(
            f"{loc.sop_instance_uid}: blob has {size} bytes, the index says {loc.size}"
        )


class _PartQueue:
    """Units of a multipart retrieve fetched ahead of the one being sent, in order.

    A unit is a _Batch of stored-syntax parts or the index of one transcoded or streamed
    part. Batches are fetched up to BATCHES_AHEAD ahead and transcodes up to ``lookahead``
    units ahead, so disk reads, thread hops and codec workers overlap with writing to the
    socket.
    """

    def __init__(
        self,
        wado: WadoService,
        sendable: list[tuple[InstanceLocation, str]],
        boundary: str,
        zero_copy: bool = False,
    ) -> None:
        self.wado = wado
        self.sendable = sendable
        self.zero_copy = zero_copy
        """Batches whose parts all have hot-tier files are sent as files (sendfile), not
        read ahead."""
        self.direct: set[int] = set()
        """Units sent as files (decided when first scheduled)."""
        self.units: list[_Batch | int] = []
        self.content_length: int | None = None
        self.pending: dict[int, asyncio.Task[Any]] = {}
        self.next_native = 0
        self.next_transcode = 0
        self.unit_parts: list[int] = []
        """Index in ``sendable`` of each unit's first part."""
        self.read_ahead_to = 0
        """Parts before this one were handed to Archive.read_ahead."""
        self.reading_ahead: set[asyncio.Task[None]] = set()
        self.first_reader: BlobReader | None = None
        self._plan(boundary)

    def _plan(self, boundary: str) -> None:
        total, all_stored = 0, True
        batch: _Batch | None = None
        for i, (loc, target) in enumerate(self.sendable):
            stored = target == loc.transfer_syntax_uid
            all_stored = all_stored and stored
            head = part_header(boundary, _part_type(target))
            total += len(head) + loc.size
            if not stored or not self.wado._whole(loc, target):
                batch = None
                self.units.append(i)
                self.unit_parts.append(i)
                continue
            if batch is None or batch.nbytes + len(head) + loc.size > BATCH_BYTES:
                batch = _Batch([], [], 0)
                self.units.append(batch)
                self.unit_parts.append(i)
            batch.locations.append(loc)
            batch.headers.append(head)
            batch.nbytes += len(head) + loc.size
        if all_stored:
            self.content_length = total + len(closing_delimiter(boundary))

    def _fetch(self, unit: _Batch | int) -> asyncio.Task[Any] | None:
        if isinstance(unit, _Batch):
            return asyncio.ensure_future(self.wado._read_batch(unit))
        loc, target = self.sendable[unit]
        if not self.wado._whole(loc, target):
            return None
        return asyncio.ensure_future(self.wado._part_bytes(loc, target))

    def _schedule(self, current: int) -> None:
        self._read_ahead(current)
        for attr, window, native in (
            ("next_native", BATCHES_AHEAD + 1, True),
            ("next_transcode", self.wado.lookahead, False),
        ):
            j = max(getattr(self, attr), current)
            while j < min(len(self.units), current + window):
                unit = self.units[j]
                if isinstance(unit, _Batch) == native and j not in self.pending:
                    if native and self._sendable_as_files(unit):
                        self.direct.add(j)
                        j += 1
                        continue
                    task = self._fetch(unit)
                    if task is not None:
                        task.add_done_callback(_consume)
                        self.pending[j] = task
                j += 1
            setattr(self, attr, j)

    def _read_ahead(self, current: int) -> None:
        """Keep READ_AHEAD_PARTS parts from unit ``current`` on asked for, half a window at a
        time (fewer, larger calls). A lone part (an instance) is read right away: nothing lies
        ahead of it, so no thread hop is spent on it."""
        if current >= len(self.unit_parts) or len(self.sendable) < 2:
            return
        until = min(len(self.sendable), self.unit_parts[current] + READ_AHEAD_PARTS)
        if until - self.read_ahead_to < READ_AHEAD_PARTS // 2 and until < len(self.sendable):
            return
        ahead = [loc for loc, _ in self.sendable[self.read_ahead_to : until]]
        self.read_ahead_to = max(self.read_ahead_to, until)
        if ahead:
            task = asyncio.ensure_future(self.wado.archive.read_ahead(ahead))
            self.reading_ahead.add(task)
            task.add_done_callback(self.reading_ahead.discard)
            task.add_done_callback(_consume)

    async def prime(self) -> None:
        """Fetch (or open) unit 0 now, raising its error while a status can still be sent."""
        unit = self.units[0]
        if isinstance(unit, int) and not self.wado._whole(*self.sendable[unit]):
            self.first_reader = await self.wado.archive.open_blob(self.sendable[unit][0])
            return
        self._schedule(0)
        if 0 in self.direct:
            assert isinstance(unit, _Batch)
            # Each part is opened again when sent; a missing or mis-sized blob is found
            # here, while the status can still say so.
            for loc in unit.locations:
                opened = self.wado._open_hot(loc)
                if opened is not None:
                    os.close(opened.fd)
                    continue
                reader = await self.wado.archive.open_blob(loc)
                try:
                    _check_size(loc, reader.size)
                finally:
                    await reader.close()
            return
        task = self.pending[0]
        await asyncio.wait([task])
        exc = task.exception()
        # A transcoding failure is skipped in a multi-instance body (see the module
        # docstring); alone it is the whole answer, so it gets its status.
        if exc is not None and (len(self.sendable) == 1 or not isinstance(exc, TranscodingError)):
            await self.cancel()
            raise exc

    def _sendable_as_files(self, batch: _Batch) -> bool:
        hot_path = self.wado.hot_path
        return (
            self.zero_copy
            and hot_path is not None
            and all(hot_path(loc) is not None for loc in batch.locations)
        )

    def is_direct(self, u: int) -> bool:
        """Is unit ``u`` (being sent now) sent as files? Schedules the units ahead of it."""
        self._schedule(u)
        return u in self.direct

    async def take(self, u: int) -> bytes:
        self._schedule(u)
        data: bytes = await self.pending.pop(u)
        return data

    async def take_batch(self, u: int) -> list[bytes]:
        self._schedule(u)
        chunks: list[bytes] = await self.pending.pop(u)
        return chunks

    async def open(self, u: int) -> BlobReader:
        self._schedule(u)
        if u == 0 and self.first_reader is not None:
            reader, self.first_reader = self.first_reader, None
            return reader
        unit = self.units[u]
        assert isinstance(unit, int)
        return await self.wado.archive.open_blob(self.sendable[unit][0])

    async def cancel(self) -> None:
        for task in self.pending.values():
            task.cancel()
        self.pending.clear()
        if self.first_reader is not None:
            reader, self.first_reader = self.first_reader, None
            await reader.close()


def _consume(task: asyncio.Task[Any]) -> None:
    """Mark a prefetch task's exception as seen (it is re-raised where it is awaited)."""
    if not task.cancelled():
        task.exception()
