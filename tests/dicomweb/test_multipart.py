"""The streaming multipart/related parser and writer."""

from __future__ import annotations

import subprocess
import tracemalloc
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest

from dicomweb.multipart import (
    BodyTooLarge,
    MalformedMultipart,
    closing_delimiter,
    part_header,
    spool_multipart,
)
from storage.errors import OutOfResources, StoreUnavailable


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def body(parts: Iterable[bytes], boundary: bytes = b"b0und", preamble: bytes = b"") -> bytes:
    out = preamble
    for p in parts:
        out += b"\r\n--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + p
    return out + b"\r\n--" + boundary + b"--\r\nepilogue"


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 1 << 20])
async def test_parts_survive_any_chunking(tmp_path: Path, chunk_size: int) -> None:
    payloads = [b"first\r\n--b0un", b"", bytes(range(256)) * 10]
    data = body(payloads, preamble=b"this is a preamble")
    spooled = await spool_multipart(chunked(data, chunk_size), "b0und", tmp_path, 1 << 30)
    assert [p.path.read_bytes() for p in spooled.parts] == payloads
    assert [p.content_type for p in spooled.parts] == ["application/dicom"] * 3
    assert [p.size for p in spooled.parts] == [len(p) for p in payloads]


async def test_body_starting_with_delimiter_and_lf_headers(tmp_path: Path) -> None:
    data = b"--xyz  \r\ncontent-type: application/dicom\n\nABC\r\n--xyz--"
    spooled = await spool_multipart(chunked(data, 5), "xyz", tmp_path, 1 << 20)
    assert [p.path.read_bytes() for p in spooled.parts] == [b"ABC"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"no delimiter at all", "no boundary delimiter"),
        (b"--b0und\r\nContent-Type: application/dicom\r\n\r\nhalf a file", "no closing"),
        (b"--b0und\r\nContent-Type: appli", "inside a part's headers"),
        (b"--b0und", "right after a boundary"),
        (b"--b0und--\r\n", "no parts"),
        (b"--b0undGARBAGE\r\n\r\nx\r\n--b0und--", "garbage after a boundary"),
    ],
)
async def test_malformed_bodies(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(MalformedMultipart, match=reason):
        await spool_multipart(chunked(data, 4), "b0und", tmp_path, 1 << 20)
    assert list(tmp_path.iterdir()) == []


async def test_limit_stops_reading_early_without_buffering(tmp_path: Path) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b"--b0und\r\nContent-Type: application/dicom\r\n\r\n"
        block = b"\0" * (1 << 20)
        while True:
            sent += len(block)
            yield block

    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            await spool_multipart(endless(), "b0und", tmp_path, 64 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 64 << 20 <= sent <= 66 << 20
    assert peak < 8 << 20, f"parser held {peak} bytes"
    assert list(tmp_path.iterdir()) == []


async def test_writer_round_trips_through_parser(tmp_path: Path) -> None:
    payloads = [b"one", b"x" * 200_000, b""]
    out = b"".join(part_header("bnd", "application/dicom") + p for p in payloads)
    out += closing_delimiter("bnd")
    spooled = await spool_multipart(chunked(out, 1000), "bnd", tmp_path, 1 << 30)
    assert [p.path.read_bytes() for p in spooled.parts] == payloads
    assert all(p.content_type == "application/dicom" for p in spooled.parts)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs: a disk that fills up. Mounting needs root (as in CI)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.parametrize("chunk_size", [64 * 1024, 1000])  # 1000: writes wait in a buffer
async def test_a_full_spool_disk_is_out_of_resources_and_leaves_nothing(
    small_filesystem: Path, chunk_size: int
) -> None:
    spool = small_filesystem / "spool"
    seen: list[Path] = []
    data = body([bytes(300_000), bytes(300_000), bytes(600_000)])  # the third does not fit
    with pytest.raises(OutOfResources, match="no space left on the server"):
        await spool_multipart(
            chunked(data, chunk_size), "b0und", spool, 1 << 30, lambda p: seen.append(p.path)
        )
    assert len(seen) == 2  # the parts that fitted were offered as they completed...
    assert list(spool.iterdir()) == []  # ...and are gone with the rest
    # The disk has room again: the next body spools as usual.
    spooled = await spool_multipart(chunked(body([b"ok"]), 7), "b0und", spool, 1 << 30)
    assert [p.path.read_bytes() for p in spooled.parts] == [b"ok"]


async def test_a_spool_that_cannot_be_made_is_unavailable_without_paths(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    spool = tmp_path / "a-file" / "spool"  # its parent is not a directory
    with pytest.raises(StoreUnavailable, match="cannot spool the request body") as raised:
        await spool_multipart(chunked(body([b"x"]), 64), "b0und", spool, 1 << 30)
    assert str(tmp_path) not in str(raised.value)
