"""WADO-RS (PS3.18 §10.4): instances of a study / series / instance, metadata, and DELETE.

Instances stream as multipart/related; type="application/dicom" straight from the blob store
in 1 MiB chunks. An instance whose stored transfer syntax the client does not accept goes
through the transcoder; up to ``lookahead`` transcodes run concurrently ahead of the part
being sent, so the parts keep their order while the pool stays busy.

Failures after the response headers are sent cannot change the status (and a Warning header
can no longer be added). The choice made here: an instance that cannot be transcoded
(NoCodec, CorruptPixelData) is left out of the multipart body and logged, the rest is sent;
a storage failure mid-stream (blob gone, checksum mismatch, tier unreachable) aborts the
response, so the client sees a truncated body instead of silently incomplete data.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from conformance.transfer_syntaxes import TRANSFER_SYNTAXES
from dicomweb.dicom_json import join_metadata
from dicomweb.dicom_xml import json_to_xml
from dicomweb.errors import HttpError
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
from dicomweb.resources import ResourcePath, encoder_check, source_of
from dicomweb.urls import BaseUrl
from storage.archive import ArchiveService
from storage.blobs import BlobReader
from storage.model import InstanceLocation
from transcoding.errors import TranscodingError
from transcoding.service import TranscoderService

log = logging.getLogger("arca.dicomweb.wado")

CHUNK_SIZE = 1 << 20
WHOLE_PART_BYTES = 4 << 20
"""Parts up to this size are read whole ahead of sending (at most READ_AHEAD of them per
request in memory); larger ones stream in CHUNK_SIZE chunks."""
READ_AHEAD = 8
"""Native parts fetched ahead of the one being written."""
INLINE_READ_BYTES = 2 << 20
"""Hot-tier blobs up to this size are read on the event loop from their local path: a
page-cache read of a few hundred KiB costs less than the thread hop of read_range, and
a series retrieve is mostly such reads. Larger ones go through the reader's thread."""


class WadoService:
    """Instance retrieval, metadata and deletion endpoints."""

    def __init__(
        self,
        archive: ArchiveService,
        transcoder: TranscoderService | None,
        base_url: BaseUrl,
        lookahead: int = 4,
    ) -> None:
        self.archive = archive
        self.transcoder = transcoder
        self.base_url = base_url
        self.lookahead = max(1, lookahead)

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
        parts = _PartQueue(self, sendable)
        # Fetch the first part before answering, so an error there still gets its status.
        await parts.prime()
        return StreamingResponse(self._multipart(parts, boundary), media_type=media_type)

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
                    return f.read()
            return await reader.read_all()
        finally:
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
        source = await source_of(self.archive, loc)
        return await self.transcoder.transcode(source, target, cache_key=loc.sha256)

    async def _multipart(self, parts: _PartQueue, boundary: str) -> AsyncIterator[bytes]:
        try:
            for i, (loc, target) in enumerate(parts.sendable):
                head = part_header(boundary, _part_type(target))
                if self._whole(loc, target):
                    try:
                        data = await parts.take(i)
                    except TranscodingError as exc:
                        log.error("%s left out of the response: %s", loc.sop_instance_uid, exc)
                        continue
                    # One write per small part: header and body together.
                    yield head + data
                    continue
                yield head
                async for chunk in self._blob_chunks(await parts.open(i)):
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


class _PartQueue:
    """Parts of a multipart retrieve fetched ahead of the one being sent, in order.

    Whole parts (small native blobs, transcodes) are fetched by tasks up to READ_AHEAD native
    reads and ``lookahead`` transcodes ahead, so disk reads, thread hops and codec workers
    overlap with writing to the socket.
    """

    def __init__(self, wado: WadoService, sendable: list[tuple[InstanceLocation, str]]) -> None:
        self.wado = wado
        self.sendable = sendable
        self.pending: dict[int, asyncio.Task[bytes]] = {}
        self.next_native = 0
        self.next_transcode = 0
        self.first_reader: BlobReader | None = None

    def _schedule(self, current: int) -> None:
        for attr, window, transcode in (
            ("next_native", READ_AHEAD, False),
            ("next_transcode", self.wado.lookahead, True),
        ):
            j = max(getattr(self, attr), current)
            while j < min(len(self.sendable), current + window):
                loc, target = self.sendable[j]
                is_transcode = target != loc.transfer_syntax_uid
                if is_transcode == transcode and self.wado._whole(loc, target):
                    task = asyncio.ensure_future(self.wado._part_bytes(loc, target))
                    task.add_done_callback(_consume)
                    self.pending[j] = task
                j += 1
            setattr(self, attr, j)

    async def prime(self) -> None:
        """Fetch (or open) part 0 now, raising its error while a status can still be sent."""
        loc, target = self.sendable[0]
        if not self.wado._whole(loc, target):
            self.first_reader = await self.wado.archive.open_blob(loc)
            return
        self._schedule(0)
        task = self.pending[0]
        await asyncio.wait([task])
        exc = task.exception()
        # A transcoding failure is skipped in a multi-instance body (see the module
        # docstring); alone it is the whole answer, so it gets its status.
        if exc is not None and (len(self.sendable) == 1 or not isinstance(exc, TranscodingError)):
            await self.cancel()
            raise exc

    async def take(self, i: int) -> bytes:
        self._schedule(i)
        return await self.pending.pop(i)

    async def open(self, i: int) -> BlobReader:
        self._schedule(i)
        if i == 0 and self.first_reader is not None:
            reader, self.first_reader = self.first_reader, None
            return reader
        return await self.wado.archive.open_blob(self.sendable[i][0])

    async def cancel(self) -> None:
        for task in self.pending.values():
            task.cancel()
        self.pending.clear()
        if self.first_reader is not None:
            reader, self.first_reader = self.first_reader, None
            await reader.close()


def _consume(task: asyncio.Task[bytes]) -> None:
    """Mark a prefetch task's exception as seen (it is re-raised where it is awaited)."""
    if not task.cancelled():
        task.exception()
