"""WADO-RS frames and bulk data (PS3.18 §10.4.1.1.4-5, §8.7.3).

Frames are read straight from the byte spans indexed at ingest (InstanceLocation.frames):
native pixels as application/octet-stream, encapsulated ones as their stored bitstream when
the client accepts that syntax's media type (image/jp2, image/jls, image/jpeg, ...). Anything
else — another syntax, or objects whose spans could not be indexed — goes to the transcoder.

Bulk data honours a single ``Range: bytes=a-b`` (RFC 9110 §14) with 206 / Content-Range.

Frames carry a strong ETag computed from the instance's SHA-256, the frame numbers and the
negotiated media type and transfer syntax (and, when transcoded, the codec libraries'
versions), and answer a matching ``If-None-Match`` with 304 before reading anything
(:mod:`dicomweb.http_caching`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from conformance.transfer_syntaxes import is_native
from dicomweb.errors import HttpError
from dicomweb.http_caching import boundary_for, caching_headers, etag_for, not_modified
from dicomweb.media import (
    OCTET_STREAM,
    FrameTarget,
    MediaRange,
    NotAcceptable,
    accepts_octet_stream,
    negotiate_frames,
    parse_accept,
)
from dicomweb.multipart import closing_delimiter, multipart_content_type, new_boundary, part_header
from dicomweb.resources import ResourcePath, source_of
from dicomweb.wado import INLINE_READ_BYTES
from storage.archive import ArchiveService
from storage.hot import in_memory
from storage.model import InstanceLocation
from transcoding.service import TranscoderService, library_versions

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
PIXEL_DATA_PATH = "7FE00010"


def parse_frame_list(text: str, number_of_frames: int) -> list[int]:
    """``1,3,5`` → [1, 3, 5]; 400 when malformed, 404 when a frame does not exist."""
    frames: list[int] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1:
            raise HttpError(400, f"frame list {text!r}: frame numbers are integers from 1")
        frames.append(int(piece))
    if number_of_frames <= 0:
        raise HttpError(404, "this instance has no pixel data frames")
    missing = [n for n in frames if n > number_of_frames]
    if missing:
        raise HttpError(
            404, f"frame {missing[0]} does not exist: the instance has {number_of_frames}"
        )
    return frames


def _single_or_multipart(
    parts: list[bytes],
    part_type: str,
    multipart: bool,
    headers: dict[str, str] | None = None,
    boundary: str | None = None,
    **params: str,
) -> Response:
    if not multipart and len(parts) == 1:
        return Response(parts[0], media_type=part_type, headers=headers)
    boundary = boundary or new_boundary()
    body = b"".join(part_header(boundary, part_type) + p for p in parts)
    body += closing_delimiter(boundary)
    media_type = multipart_content_type(part_type.split(";")[0], boundary, **params)
    return Response(body, media_type=media_type, headers=headers)


class FrameService:
    """Frames and bulk data endpoints."""

    def __init__(self, archive: ArchiveService, transcoder: TranscoderService | None) -> None:
        self.archive = archive
        self.transcoder = transcoder

    async def frames(self, request: Request) -> Response:
        path = ResourcePath.of(request)
        ranges = parse_accept(request.headers.get("accept"))
        [loc] = await self.archive.locate(path.study, path.series, path.instance)
        numbers = parse_frame_list(request.path_params["frames"], loc.number_of_frames)
        return await self._frames_response(loc, numbers, ranges, request)

    async def _frames_response(
        self,
        loc: InstanceLocation,
        numbers: list[int],
        ranges: list[MediaRange],
        request: Request,
    ) -> Response:
        can_encode = self.transcoder.can_encode if self.transcoder else None
        target = negotiate_frames(ranges, loc.transfer_syntax_uid, can_encode)
        # One frame goes single part unless the client asked for multipart; several frames
        # need multipart/related (PS3.18 §8.7.3.3), which a wildcard Accept allows.
        multipart = target.multipart or len(numbers) > 1
        if multipart and not target.multipart_ok:
            raise NotAcceptable("several frames are sent as multipart/related only")
        part_type = f"{target.media_type}; transfer-syntax={target.transfer_syntax}"
        etag = etag_for(
            "frames",
            loc.sha256,
            ",".join(map(str, numbers)),
            part_type,
            "multipart" if multipart else "single",
            library_versions() if target.transcode or loc.frames is None else "as stored",
        )
        unchanged = not_modified(request, etag)
        if unchanged is not None:
            return unchanged
        parts = await self._frame_bytes(loc, numbers, target)
        return _single_or_multipart(
            parts,
            part_type,
            multipart,
            caching_headers(etag),
            boundary_for(etag),
            transfer_syntax=target.transfer_syntax,
        )

    async def _frame_bytes(
        self, loc: InstanceLocation, numbers: list[int], target: FrameTarget
    ) -> list[bytes]:
        if not target.transcode and loc.frames is not None:
            spans = [loc.frames[n - 1].fragments for n in numbers]
            total = sum(length for span in spans for _, length in span)
            hot_path = getattr(self.archive, "hot_path", None)
            path: Path | None = hot_path(loc) if hot_path is not None else None
            if path is not None and total <= INLINE_READ_BYTES:
                # A hot-tier file named without I/O (optional archive method); gone
                # (migrated) means ask the archive.
                with contextlib.suppress(FileNotFoundError):
                    return await _spans_from_file(path, spans, total)
            reader = await self.archive.open_blob(loc)
            try:
                if reader.local_path is not None:
                    return await _spans_from_file(reader.local_path, spans, total)
                parts: list[bytes] = []
                for span in spans:
                    pieces = [await reader.read_range(o, length) for o, length in span]
                    parts.append(b"".join(pieces))
                return parts
            finally:
                await reader.close()
        if self.transcoder is None:
            raise NotAcceptable(
                "frames of this object are not indexed and no transcoder is configured"
            )
        source = await source_of(self.archive, loc)
        syntax = None if is_native(target.transfer_syntax) else target.transfer_syntax
        return await self.transcoder.frames(source, numbers, syntax)

    async def bulkdata(self, request: Request) -> Response:
        path = ResourcePath.of(request)
        ranges = parse_accept(request.headers.get("accept"))
        [loc] = await self.archive.locate(path.study, path.series, path.instance)
        if (
            request.path_params["path"].upper() == PIXEL_DATA_PATH
            and loc.number_of_frames
            and not is_native(loc.transfer_syntax_uid)
        ):
            # PS3.18 §8.7.3.3: compressed Pixel Data as bulk data is its frames, one part each,
            # in the stored syntax when the Accept allows it, else decoded: never the
            # item-encoded value.
            frames = list(range(1, loc.number_of_frames + 1))
            return await self._frames_response(loc, frames, ranges, request)
        if not accepts_octet_stream(ranges):
            raise NotAcceptable("bulk data is sent as application/octet-stream")
        multipart = any(r.is_multipart for r in ranges[:1])
        data = await self.archive.read_bulkdata(loc, request.path_params["path"])
        status, headers = 200, {"Accept-Ranges": "bytes"}
        range_header = request.headers.get("range")
        if range_header:
            first, last = _byte_range(range_header, len(data))
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
            data, status = data[first : last + 1], 206
        if multipart:
            boundary = new_boundary()
            body = part_header(boundary, OCTET_STREAM) + data + closing_delimiter(boundary)
            media_type = multipart_content_type(OCTET_STREAM, boundary)
            return Response(body, status_code=status, media_type=media_type, headers=headers)
        return Response(data, status_code=status, media_type=OCTET_STREAM, headers=headers)


async def _spans_from_file(
    path: Path, spans: list[tuple[tuple[int, int], ...]], total: int
) -> list[bytes]:
    """Each span's bytes from a local file, in one open: on the event loop when they are
    few (a page-cache read costs less than a thread hop) and their pages are in memory, else
    in a worker thread, so the loop never waits for the disk."""
    if total <= INLINE_READ_BYTES:
        fd = os.open(path, os.O_RDONLY)
        try:
            if all(in_memory(fd, length, offset) for span in spans for offset, length in span):
                return _pread_spans(fd, spans)
        finally:
            os.close(fd)
    return await asyncio.to_thread(_read_spans, path, spans)


def _read_spans(path: Path, spans: list[tuple[tuple[int, int], ...]]) -> list[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _pread_spans(fd, spans)
    finally:
        os.close(fd)


def _pread_spans(fd: int, spans: list[tuple[tuple[int, int], ...]]) -> list[bytes]:
    return [b"".join(os.pread(fd, length, offset) for offset, length in span) for span in spans]


def _byte_range(header: str, size: int) -> tuple[int, int]:
    """One ``bytes=a-b`` range (inclusive) clipped to ``size``; 416 when unsatisfiable."""
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match or match.group(1) == match.group(2) == "":
        raise HttpError(
            416,
            f"Range {header!r}: only a single bytes=first-last range is served",
            {"Content-Range": f"bytes */{size}"},
        )
    a, b = match.group(1), match.group(2)
    if a == "":
        first, last = max(0, size - int(b)), size - 1  # suffix range: the last b bytes
    else:
        first, last = int(a), min(size - 1, int(b)) if b else size - 1
    if first >= size or first > last:
        raise HttpError(
            416,
            f"Range {header!r} is outside the {size} bytes",
            {"Content-Range": f"bytes */{size}"},
        )
    return first, last
