"""The parser's way for chunks inside a part (written without passing through the buffer)
agrees with its state machine for every chunk size around the delimiter's length, with
delimiters and near-delimiters at every offset from a chunk boundary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dicomweb.multipart import spool_multipart

BOUNDARY = b"b0und"


async def _chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _body(parts: list[bytes]) -> bytes:
    out = b""
    for p in parts:
        out += b"\r\n--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n" + p
    return out + b"\r\n--" + BOUNDARY + b"--\r\n"


PAYLOADS = [
    b"x" * 100 + b"\r\n--b0un" + b"y" * 37,  # a near-delimiter
    b"\r\n--b0unX" * 5,
    b"",
    bytes(range(256)) * 3,
    b"z",
    b"-" * 50 + b"\r\n" * 20,
]


@pytest.mark.parametrize("chunk_size", [*range(7, 40), 64, 100, 333])
@pytest.mark.parametrize("lead", [0, 1, 5, 8])
async def test_every_chunking_gives_the_same_parts(
    tmp_path: Path, chunk_size: int, lead: int
) -> None:
    # ``lead`` shifts where the delimiters fall relative to the chunk boundaries.
    payloads = [b"p" * lead, *PAYLOADS]
    spooled = await spool_multipart(
        _chunked(_body(payloads), chunk_size), BOUNDARY.decode(), tmp_path, 1 << 30
    )
    assert [p.path.read_bytes() for p in spooled.parts] == payloads
    assert [p.size for p in spooled.parts] == [len(p) for p in payloads]
