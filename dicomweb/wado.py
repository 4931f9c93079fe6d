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
            body, size = await self._first_body(loc, target)
            headers = {"Content-Length": str(size)} if size is not None else {}
            return StreamingResponse(body, media_type=_part_type(target), headers=headers)
        boundary = new_boundary()
        syntaxes = {target for _, target in sendable}
        params = {"transfer_syntax": next(iter(syntaxes))} if len(syntaxes) == 1 else {}
        media_type = multipart_content_type(DICOM, boundary, **params)
        # Open the first part before answering, so an error there still gets its status.
        first = await self._first_body(*sendable[0])
        return StreamingResponse(self._multipart(sendable, boundary, first), media_type=media_type)

    async def _first_body(
        self, loc: InstanceLocation, target: str
    ) -> tuple[AsyncIterator[bytes], int | None]:
        if target == loc.transfer_syntax_uid:
            reader = await self.archive.open_blob(loc)
            return self._blob_chunks(reader), reader.size
        data = await self._transcode(loc, target)
        return _once(data), len(data)

    @staticmethod
    async def _blob_chunks(blob: BlobReader) -> AsyncIterator[bytes]:
        try:
            async for chunk in blob.iter_chunks(CHUNK_SIZE):
                yield chunk
        finally:
            await blob.close()

    async def _transcode(self, loc: InstanceLocation, target: str) -> bytes:
        if self.transcoder is None:  # negotiation never picks a target without one
            raise NotAcceptable("no transcoder is configured")
        source = await source_of(self.archive, loc)
        return await self.transcoder.transcode(source, target, cache_key=loc.sha256)

    async def _multipart(
        self,
        sendable: list[tuple[InstanceLocation, str]],
        boundary: str,
        first: tuple[AsyncIterator[bytes], int | None],
    ) -> AsyncIterator[bytes]:
        pending: dict[int, asyncio.Task[bytes]] = {}

        def schedule(upto: int) -> None:
            for j in range(upto, min(len(sendable), upto + self.lookahead)):
                loc, target = sendable[j]
                if j == 0 or j in pending or target == loc.transfer_syntax_uid:
                    continue
                pending[j] = asyncio.ensure_future(self._transcode(loc, target))

        try:
            for i, (loc, target) in enumerate(sendable):
                schedule(i)
                head = part_header(boundary, _part_type(target))
                if i == 0:
                    body = first[0]
                elif i in pending:
                    try:
                        data = await pending.pop(i)
                    except TranscodingError as exc:
                        log.error("%s left out of the response: %s", loc.sop_instance_uid, exc)
                        continue
                    yield head + data
                    continue
                else:
                    body = self._blob_chunks(await self.archive.open_blob(loc))
                yield head
                async for chunk in body:
                    yield chunk
            yield closing_delimiter(boundary)
        finally:
            for task in pending.values():
                task.cancel()

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


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


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
