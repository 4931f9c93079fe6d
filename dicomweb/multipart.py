"""multipart/related (RFC 2387 over RFC 2046 §5.1) for DICOMweb: a streaming parser that
spools request parts to files, and the delimiters responses are written with (the services
stream parts themselves, each as soon as it is ready).

The parser never holds the body in memory: it keeps at most one read chunk plus a delimiter's
length of look-behind, writes part bodies straight to temporary files in the spool directory,
and stops reading as soon as the body passes the size limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from storage.errors import OutOfResources, StorageError, StoreUnavailable

_MAX_HEADER_BYTES = 64 * 1024
_CRLF = b"\r\n"


class MalformedMultipart(ValueError):
    """The body is not a well-formed multipart/related entity (HTTP 400); says where."""


class BodyTooLarge(Exception):
    """The body passed the configured limit (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


@dataclass
class Part:
    """One body part spooled to ``path``; header names lower-cased."""

    headers: dict[str, str]
    path: Path
    size: int = 0

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


@dataclass
class SpooledParts:
    """All parts of a request; ``discard`` removes files no one consumed."""

    parts: list[Part] = field(default_factory=list)

    def discard(self) -> None:
        for part in self.parts:
            part.path.unlink(missing_ok=True)


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    # RFC 2046 says CRLF; a bare LF is tolerated in part headers (never in the delimiter).
    lines = block.replace(b"\r\n", b"\n").split(b"\n")
    for raw in lines:
        if not raw.strip():
            continue
        if raw[:1] in (b" ", b"\t") and headers:
            # obsolete line folding: continue the previous header
            last = next(reversed(headers))
            headers[last] += " " + raw.strip().decode("latin-1")
            continue
        name, colon, value = raw.partition(b":")
        if not colon or not name.strip():
            raise MalformedMultipart(f"part header line without a name: {raw[:80]!r}")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return headers


class _Parser:
    """RFC 2046 §5.1.1 state machine fed with chunks."""

    def __init__(
        self, boundary: str, spool_dir: Path, on_part: Callable[[Part], None] | None = None
    ) -> None:
        self.on_part = on_part
        self.dash_boundary = b"--" + boundary.encode("latin-1")
        self.delimiter = _CRLF + self.dash_boundary
        self.spool_dir = spool_dir
        self.buf = bytearray()
        self.state = "preamble"
        self.result = SpooledParts()
        self.file: BinaryIO | None = None
        self.part: Part | None = None

    def feed(self, chunk: bytes) -> None:
        if self.state == "body" and self._body_chunk(chunk):
            return
        self.buf += chunk
        while self._step():
            pass

    def _body_chunk(self, chunk: bytes) -> bool:
        """Inside a part, a chunk without a delimiter goes to the file without first being
        copied into the buffer (most of a body's chunks). False, having done nothing, when
        the chunk holds or may complete a delimiter: the state machine takes it then.

        In the body state the buffer holds less than a delimiter (the look-behind), so a
        delimiter not wholly in the chunk starts in the buffer and ends within the chunk's
        first ``len(delimiter) - 1`` bytes."""
        buf, delimiter = self.buf, self.delimiter
        keep = len(delimiter) - 1
        if len(chunk) <= keep or chunk.find(delimiter) >= 0:
            return False
        if buf and (bytes(buf) + chunk[:keep]).find(delimiter) >= 0:
            return False
        assert self.file is not None and self.part is not None
        safe = len(chunk) - keep
        if buf:
            self.file.write(buf)
            self.part.size += len(buf)
            buf.clear()
        with memoryview(chunk) as view:  # no copy of the slice
            self.file.write(view[:safe])
            buf += view[safe:]
        self.part.size += safe
        return True

    def _step(self) -> bool:
        """Advance one state as far as the buffer allows; False when more data is needed."""
        buf = self.buf
        if self.state == "preamble":
            if buf.startswith(self.dash_boundary):
                del buf[: len(self.dash_boundary)]
                self.state = "after_delimiter"
                return True
            if len(buf) < len(self.dash_boundary) and self.dash_boundary.startswith(bytes(buf)):
                return False
            i = buf.find(self.delimiter)
            if i < 0:
                # Keep a delimiter's length so a boundary split across chunks is still seen.
                keep = len(self.delimiter) - 1
                if len(buf) > keep:
                    del buf[: len(buf) - keep]
                return False
            del buf[: i + len(self.delimiter)]
            self.state = "after_delimiter"
            return True
        if self.state == "after_delimiter":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self.state = "done"
                buf.clear()
                return False
            # Transport padding (linear white space) may follow the boundary, then CRLF.
            eol = buf.find(b"\n")
            if eol < 0:
                if len(buf) > 1024:
                    raise MalformedMultipart("garbage after a boundary delimiter")
                return False
            if buf[:eol].strip(b" \t\r"):
                raise MalformedMultipart("garbage after a boundary delimiter")
            del buf[: eol + 1]
            self.state = "headers"
            return True
        if self.state == "headers":
            end, sep = buf.find(b"\r\n\r\n", 0, _MAX_HEADER_BYTES + 4), 4
            # Bounded: the buffer may already hold much of the body after the headers.
            lf = buf.find(b"\n\n", 0, end + 2 if end >= 0 else _MAX_HEADER_BYTES + 2)
            if lf >= 0 and (end < 0 or lf < end):
                end, sep = lf, 2
            if buf.startswith(_CRLF):
                end, sep = 0, 2  # a part without headers
            if end < 0:
                if len(buf) > _MAX_HEADER_BYTES:
                    raise MalformedMultipart("part headers longer than 64 KiB")
                return False
            headers = _parse_headers(bytes(buf[:end]))
            del buf[: end + sep]
            path = self.spool_dir / f"stow-{os.urandom(12).hex()}.part"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.file = os.fdopen(fd, "wb")
            self.part = Part(headers=headers, path=path)
            self.result.parts.append(self.part)
            self.state = "body"
            return True
        if self.state == "body":
            assert self.file is not None and self.part is not None
            i = buf.find(self.delimiter)
            if i < 0:
                safe = len(buf) - (len(self.delimiter) - 1)
                if safe > 0:
                    with memoryview(buf) as view:  # no copy of the slice
                        self.file.write(view[:safe])
                    self.part.size += safe
                    del buf[:safe]
                return False
            with memoryview(buf) as view:
                self.file.write(view[:i])
            self.part.size += i
            self.file.close()
            self.file = None
            del buf[: i + len(self.delimiter)]
            self.state = "after_delimiter"
            if self.on_part is not None:
                self.on_part(self.part)
            return True
        # done: the epilogue is ignored (RFC 2046 §5.1.1)
        buf.clear()
        return False

    def finish(self) -> SpooledParts:
        if self.state != "done":
            where = {
                "preamble": "no boundary delimiter found in the body",
                "after_delimiter": "the body ends right after a boundary delimiter",
                "headers": "the body ends inside a part's headers",
                "body": "the body ends inside a part (no closing boundary delimiter)",
            }[self.state]
            raise MalformedMultipart(f"truncated multipart body: {where}")
        if not self.result.parts:
            raise MalformedMultipart("the multipart body has no parts")
        return self.result

    def abort(self) -> None:
        file, self.file = self.file, None
        try:
            if file is not None:
                file.close()  # may fail (a full disk): the files go all the same
        finally:
            self.result.discard()


async def spool_multipart(
    chunks: AsyncIterable[bytes],
    boundary: str,
    spool_dir: Path,
    max_bytes: int,
    on_part: Callable[[Part], None] | None = None,
) -> SpooledParts:
    """Read a multipart body chunk by chunk into part files under ``spool_dir``.

    ``on_part`` is called with each part as soon as its file is complete (the rest of the
    body may still be arriving), so a caller can start working on it.

    Raises BodyTooLarge as soon as more than ``max_bytes`` arrived, MalformedMultipart for a
    body that does not parse, OutOfResources when the spool's filesystem is full and
    StoreUnavailable when it fails otherwise; in each case every spooled file is removed.
    """
    parser = _Parser(boundary, spool_dir, on_part)
    total = 0
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
        async for chunk in chunks:
            total += len(chunk)
            if total > max_bytes:
                raise BodyTooLarge(max_bytes)
            if chunk:
                parser.feed(chunk)
        return parser.finish()
    except OSError as exc:
        _abort_quietly(parser)
        raise _spool_error(exc) from exc
    except BaseException:
        _abort_quietly(parser)
        raise


def _abort_quietly(parser: _Parser) -> None:
    with contextlib.suppress(OSError):  # closing a file on a full disk fails too
        parser.abort()


def _spool_error(exc: OSError) -> StorageError:
    """The spool's own failure, in the storage error tree the HTTP edge translates: no space
    becomes 507 Insufficient Storage (RFC 4918 §11.5), anything else 503; the spool's paths
    stay out of the message."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfResources("no space left on the server to receive the request body")
    return StoreUnavailable(f"cannot spool the request body: {os.strerror(exc.errno or 0)}")


# --------------------------------------------------------------------------------------------
# Writer


def new_boundary() -> str:
    return "arca-" + os.urandom(12).hex()


def part_header(boundary: str, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    """The delimiter and headers that open a part. Every part's delimiter starts with CRLF
    (RFC 2046 §5.1.1 makes it part of the delimiter); before the first part that CRLF reads
    as an empty preamble, which every parser accepts."""
    lines = [f"\r\n--{boundary}", f"Content-Type: {content_type}"]
    if extra:
        lines += [f"{k}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def closing_delimiter(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode("latin-1")


def multipart_content_type(part_type: str, boundary: str, **params: str) -> str:
    """``multipart/related; type="..."; boundary=...`` for a response (PS3.18 §8.7.3.1)."""
    extra = "".join(f"; {k.replace('_', '-')}={v}" for k, v in params.items())
    return f'multipart/related; type="{part_type}"{extra}; boundary={boundary}'
