"""WADO-RS series retrieve in batches: Content-Length, order across batches, the hot_path
shortcut and its fallback, blobs whose size disagrees with the index."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import threading
from pathlib import Path

import httpx
import pydicom
import pytest

from dicomweb.file_body import OpenFile
from dicomweb.multipart import closing_delimiter, part_header
from dicomweb.wado import BATCH_BYTES, READ_AHEAD_PARTS, WadoService, _Batch, _PartQueue
from storage.errors import CorruptBlob
from storage.model import InstanceLocation, Tier
from tests.dicomweb.conftest import (
    DicomwebServer,
    make_series,
    multipart_parts,
    open_fds,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_series_over_several_batches_keeps_order_and_sends_content_length(
    dw: DicomwebServer,
) -> None:
    first, *rest = make_series("693_UNCI.dcm", 10)
    stored: dict[str, bytes] = {}
    datasets = []
    for n, inst in enumerate([first, *rest], start=1):
        inst.ds.InstanceNumber = n
        buf = io.BytesIO()
        inst.ds.save_as(buf, enforce_file_format=True)
        stored[inst.sop] = buf.getvalue()
        datasets.append(pydicom.dcmread(io.BytesIO(buf.getvalue())))
    dw.client().store_instances(datasets)
    assert sum(map(len, stored.values())) > BATCH_BYTES  # more than one batch
    series_url = f"/studies/{first.study}/series/{first.series}"
    with dw.http() as http:
        r = http.get(series_url)
        j2k = http.get(
            series_url,
            headers={
                "Accept": 'multipart/related; type="application/dicom"; '
                "transfer-syntax=1.2.840.10008.1.2.4.90"
            },
        )
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(r.content))
    parts = multipart_parts(r.content, r.headers["content-type"])
    got = [pydicom.dcmread(io.BytesIO(p)) for _, p in parts]
    assert [int(ds.InstanceNumber) for ds in got] == list(range(1, 11))
    for ds, (_, data) in zip(got, parts, strict=True):
        assert data == stored[str(ds.SOPInstanceUID)]  # byte for byte
    # Transcoded parts have no length known up front: chunked, still complete and in order.
    assert j2k.status_code == 200
    assert "content-length" not in j2k.headers
    j2k_parts = multipart_parts(j2k.content, j2k.headers["content-type"])
    numbers = [int(pydicom.dcmread(io.BytesIO(p)).InstanceNumber) for _, p in j2k_parts]
    assert numbers == list(range(1, 11))


# -- _read_batch against a stand-in archive ------------------------------------------------


class _Reader:
    def __init__(self, path: Path) -> None:
        self.local_path: Path | None = None  # as a cold-tier reader: bytes only
        self.data = path.read_bytes()
        self.size = len(self.data)
        self.closed = False

    async def read_all(self) -> bytes:
        return self.data

    async def read_range(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    async def close(self) -> None:
        self.closed = True


class _Archive:
    """open_blob reads files under ``root``; hot_path names files under ``hot`` (which may
    be missing, as after a migration)."""

    def __init__(self, root: Path, hot: Path | None) -> None:
        self.root, self.hot = root, hot
        self.opened: list[_Reader] = []
        self.asked_ahead: list[str] = []

    async def open_blob(self, location: InstanceLocation) -> _Reader:
        reader = _Reader(self.root / location.blob_key)
        self.opened.append(reader)
        return reader

    def hot_path(self, location: InstanceLocation) -> Path | None:
        return None if self.hot is None else self.hot / location.blob_key

    async def read_ahead(self, locations: list[InstanceLocation]) -> None:
        self.asked_ahead.extend(loc.blob_key for loc in locations)


def _archive_with_hot(tmp_path: Path, hot: str) -> _Archive:
    """Blobs under ``store``; their hot files there too ("present"), gone ("moved"), or no
    hot_path at all ("none")."""
    hot_dir = {"present": tmp_path / "store", "moved": tmp_path / "gone", "none": None}[hot]
    return _Archive(tmp_path / "store", hot_dir)


def _location(key: str, size: int) -> InstanceLocation:
    return InstanceLocation(
        study_uid="1.2",
        series_uid="1.2.3",
        sop_instance_uid=f"1.2.3.{key}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid=EXPLICIT_LE,
        blob_key=key,
        tier=Tier.HOT,
        size=size,
        sha256=hashlib.sha256(key.encode()).hexdigest(),
    )


def _service(archive: _Archive) -> WadoService:
    return WadoService(archive, None, lambda _r: "http://x")  # type: ignore[arg-type]


def _blobs(root: Path, count: int) -> list[tuple[str, bytes]]:
    root.mkdir(parents=True, exist_ok=True)
    blobs = []
    for n in range(count):
        data = bytes([n]) * (1000 + n)
        (root / f"b{n}").write_bytes(data)
        blobs.append((f"b{n}", data))
    return blobs


def _expected(blobs: list[tuple[str, bytes]], boundary: str) -> bytes:
    head = part_header(boundary, f"application/dicom; transfer-syntax={EXPLICIT_LE}")
    return b"".join(head + data for _, data in blobs)


@pytest.mark.parametrize("hot", ["present", "moved", "none"])
async def test_read_batch_from_hot_files_or_through_the_archive(tmp_path: Path, hot: str) -> None:
    blobs = _blobs(tmp_path / "store", 5)
    archive = _archive_with_hot(tmp_path, hot)
    wado = _service(archive)
    sendable = [(_location(k, len(d)), EXPLICIT_LE) for k, d in blobs]
    queue = _PartQueue(wado, sendable, "bnd")
    [batch] = queue.units
    assert isinstance(batch, _Batch)
    body = b"".join(await wado._read_batch(batch))
    assert body == _expected(blobs, "bnd")
    assert queue.content_length == len(body) + len(closing_delimiter("bnd"))
    # hot files are read directly; otherwise every part went through open_blob, now closed
    assert len(archive.opened) == (0 if hot == "present" else 5)
    assert all(r.closed for r in archive.opened)


@pytest.mark.parametrize("hot", [True, False])
async def test_blob_size_other_than_the_index_aborts(tmp_path: Path, hot: bool) -> None:
    blobs = _blobs(tmp_path / "store", 3)
    archive = _Archive(tmp_path / "store", tmp_path / "store" if hot else None)
    wado = _service(archive)
    sendable = [
        (_location(k, len(d) + (1 if n == 1 else 0)), EXPLICIT_LE) for n, (k, d) in enumerate(blobs)
    ]
    queue = _PartQueue(wado, sendable, "bnd")
    [batch] = queue.units
    assert isinstance(batch, _Batch)
    with pytest.raises(CorruptBlob, match="the index says"):
        await wado._read_batch(batch)
    assert all(r.closed for r in archive.opened)


def test_batches_split_at_batch_bytes(tmp_path: Path) -> None:
    wado = _service(_Archive(tmp_path, None))
    size = BATCH_BYTES // 3
    sendable = [(_location(f"k{n}", size), EXPLICIT_LE) for n in range(7)]
    queue = _PartQueue(wado, sendable, "bnd")
    sizes = [len(u.locations) for u in queue.units if isinstance(u, _Batch)]
    assert sizes == [2, 2, 2, 1]  # 3 parts plus their headers would pass BATCH_BYTES
    assert all(u.nbytes <= BATCH_BYTES for u in queue.units if isinstance(u, _Batch))


@pytest.mark.parametrize("hot", ["present", "moved", "none"])
async def test_frames_read_from_the_hot_file_or_through_the_archive(
    tmp_path: Path, hot: str
) -> None:
    from dataclasses import replace

    from dicomweb.frames import FrameService
    from dicomweb.media import FrameTarget
    from storage.model import FrameSpan

    [(key, data)] = _blobs(tmp_path / "store", 1)
    archive = _archive_with_hot(tmp_path, hot)
    loc = replace(
        _location(key, len(data)),
        number_of_frames=2,
        frames=(FrameSpan(((0, 10),)), FrameSpan(((10, 5), (20, 3)))),
    )
    service = FrameService(archive, None)  # type: ignore[arg-type]
    target = FrameTarget("application/octet-stream", EXPLICIT_LE, False, False)
    got = await service._frame_bytes(loc, [2, 1], target)
    assert got == [data[10:15] + data[20:23], data[0:10]]
    assert len(archive.opened) == (0 if hot == "present" else 1)
    assert all(r.closed for r in archive.opened)


async def test_read_ahead_keeps_a_window_of_parts_asked_for(tmp_path: Path) -> None:
    """Each part's file is asked for once, in order, READ_AHEAD_PARTS ahead of the part being
    sent, half a window at a time."""
    archive = _Archive(tmp_path, None)
    queue = _PartQueue(
        _service(archive),
        [(_location(f"k{n}", BATCH_BYTES // 3), EXPLICIT_LE) for n in range(100)],
        "bnd",
    )
    assert queue.unit_parts[:3] == [0, 2, 4]  # two parts per batch

    async def read_ahead_from(unit: int) -> list[str]:
        queue._read_ahead(unit)
        await asyncio.gather(*list(queue.reading_ahead))
        return archive.asked_ahead

    assert await read_ahead_from(0) == [f"k{n}" for n in range(READ_AHEAD_PARTS)]
    half = READ_AHEAD_PARTS // 2
    # Less than half a window further on: nothing new yet.
    assert len(await read_ahead_from(half // 2 - 1)) == READ_AHEAD_PARTS
    assert len(await read_ahead_from(half // 2)) == READ_AHEAD_PARTS + half
    for unit in range(len(queue.units)):
        await read_ahead_from(unit)
    assert archive.asked_ahead == [f"k{n}" for n in range(100)]


# -- zero-copy send (server.zero_copy): batches sent as open files ------------------------


async def _drain(wado: WadoService, queue: _PartQueue) -> tuple[bytes, int]:
    """The body ``_multipart`` yields, with each OpenFile read (and closed) as the server's
    sendfile would; and how many parts went as files."""
    body, files = bytearray(), 0
    async for item in wado._multipart(queue, "bnd"):
        if isinstance(item, OpenFile):
            try:
                body += os.pread(item.fd, item.size, 0)
            finally:
                os.close(item.fd)
            files += 1
        else:
            body += item
    return bytes(body), files


@pytest.mark.parametrize("hot", ["present", "moved", "none"])
async def test_zero_copy_sends_hot_files_and_reads_the_rest(tmp_path: Path, hot: str) -> None:
    blobs = _blobs(tmp_path / "store", 5)
    archive = _archive_with_hot(tmp_path, hot)
    wado = _service(archive)
    queue = _PartQueue(wado, [(_location(k, len(d)), EXPLICIT_LE) for k, d in blobs], "bnd", True)
    await queue.prime()
    body, files = await _drain(wado, queue)
    assert body == _expected(blobs, "bnd") + closing_delimiter("bnd")
    assert files == (5 if hot == "present" else 0)
    assert all(r.closed for r in archive.opened)


async def test_zero_copy_mixes_files_and_a_part_migrated_meanwhile(tmp_path: Path) -> None:
    """One hot file gone since locate() (migrated): that part is read through the archive."""
    blobs = _blobs(tmp_path / "store", 4)
    hot = tmp_path / "hot"
    hot.mkdir()
    for key, data in blobs:
        if key != "b2":
            (hot / key).write_bytes(data)
    archive = _Archive(tmp_path / "store", hot)
    wado = _service(archive)
    queue = _PartQueue(wado, [(_location(k, len(d)), EXPLICIT_LE) for k, d in blobs], "bnd", True)
    await queue.prime()
    body, files = await _drain(wado, queue)
    assert body == _expected(blobs, "bnd") + closing_delimiter("bnd")
    # b2 is in the first batch: opened once to check it before the answer, once to send it.
    assert files == 3 and len(archive.opened) == 2
    assert all(r.closed for r in archive.opened)


async def test_zero_copy_blob_size_other_than_the_index(tmp_path: Path) -> None:
    """Found before the answer starts for the first batch; later, the body aborts. No
    descriptor is left open either way."""
    blobs = _blobs(tmp_path / "store", 3)
    archive = _Archive(tmp_path / "store", tmp_path / "store")
    wado = _service(archive)
    fds = open_fds()
    wrong = [(_location(k, len(d) + (n == 1)), EXPLICIT_LE) for n, (k, d) in enumerate(blobs)]
    with pytest.raises(CorruptBlob, match="the index says"):
        await _PartQueue(wado, wrong, "bnd", True).prime()
    queue = _PartQueue(wado, wrong, "bnd", True)
    with pytest.raises(CorruptBlob, match="the index says"):
        await _drain(wado, queue)
    assert open_fds() == fds


def test_series_bodies_equal_with_and_without_zero_copy(dw: DicomwebServer) -> None:
    first, *rest = make_series("693_UNCI.dcm", 10)
    dw.client().store_instances([first.ds, *(i.ds for i in rest)])
    path = f"/studies/{first.study}/series/{first.series}"
    bodies = []
    for base in (dw.url, dw.plain_url):
        r = httpx.get(base + path, timeout=60)
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(r.content))
        bodies.append(multipart_parts(r.content, r.headers["content-type"]))
    assert len(bodies[0]) == 10
    assert bodies[0] == bodies[1]


# -- files whose pages are not in memory: read in off the event loop ---------------------


def _name_of(fd: int) -> str:
    return Path(os.readlink(f"/proc/self/fd/{fd}")).name


def _on_disk(monkeypatch: pytest.MonkeyPatch, names: set[str]) -> None:
    """INJECTED: the page cache holds every file but ``names`` (decided per file, so the
    test does not depend on what the kernel keeps)."""
    monkeypatch.setattr("dicomweb.wado.in_memory", lambda fd, _size: _name_of(fd) not in names)


async def test_zero_copy_pages_in_files_not_in_memory_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sendfile(2) on the event loop would wait there for the disk (stalling every other
    request): such files are read in by a worker thread first, then still sent as files."""
    import dicomweb.wado as wado_module

    blobs = _blobs(tmp_path / "store", 5)
    _on_disk(monkeypatch, {"b1", "b3"})
    paged: list[tuple[list[str], bool]] = []
    real_page_in = wado_module.page_in

    def page_in(files: list[tuple[int, int]]) -> None:
        paged.append(([_name_of(fd) for fd, _ in files], threading.current_thread() is loop))
        real_page_in(files)

    monkeypatch.setattr(wado_module, "page_in", page_in)
    loop = threading.current_thread()
    archive = _Archive(tmp_path / "store", tmp_path / "store")
    wado = _service(archive)
    queue = _PartQueue(wado, [(_location(k, len(d)), EXPLICIT_LE) for k, d in blobs], "bnd", True)
    fds = open_fds()
    await queue.prime()
    body, files = await _drain(wado, queue)
    assert body == _expected(blobs, "bnd") + closing_delimiter("bnd")
    assert files == 5
    assert paged == [(["b1", "b3"], False)]  # once for the batch, not on the loop's thread
    assert open_fds() == fds


async def test_zero_copy_client_gone_while_paging_in_leaves_no_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The response is cancelled (client disconnect) while a worker thread waits for the
    disk: the thread keeps its own duplicates and closes them when it is done."""
    import dicomweb.wado as wado_module

    blobs = _blobs(tmp_path / "store", 3)
    _on_disk(monkeypatch, {"b0", "b1", "b2"})
    entered, release, done = threading.Event(), threading.Event(), threading.Event()
    real_page_in = wado_module.page_in

    def slow_page_in(files: list[tuple[int, int]]) -> None:
        entered.set()
        release.wait(10)
        real_page_in(files)
        done.set()

    monkeypatch.setattr(wado_module, "page_in", slow_page_in)
    archive = _Archive(tmp_path / "store", tmp_path / "store")
    wado = _service(archive)
    queue = _PartQueue(wado, [(_location(k, len(d)), EXPLICIT_LE) for k, d in blobs], "bnd", True)
    fds = open_fds()
    await queue.prime()
    drain = asyncio.ensure_future(_drain(wado, queue))
    await asyncio.to_thread(entered.wait, 10)
    drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drain
    release.set()
    await asyncio.to_thread(done.wait, 10)
    assert done.is_set()
    assert open_fds() == fds


async def test_read_batch_reads_files_not_in_memory_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without zero-copy the loop reads hot files itself only when their pages are in memory;
    the others are read by a worker thread, and the parts keep their order."""
    import dicomweb.wado as wado_module

    blobs = _blobs(tmp_path / "store", 5)
    _on_disk(monkeypatch, {"b0", "b4"})
    calls: list[tuple[list[int], bool, bool]] = []
    real_read_files = wado_module._read_files
    loop = threading.current_thread()

    def read_files(
        batch: _Batch, files: list[tuple[int, Path]], *, in_memory_only: bool = False
    ) -> tuple[dict[int, bytes | None], list[tuple[int, Path]]]:
        on_loop = threading.current_thread() is loop
        calls.append(([i for i, _ in files], in_memory_only, on_loop))
        return real_read_files(batch, files, in_memory_only=in_memory_only)

    monkeypatch.setattr(wado_module, "_read_files", read_files)
    wado = _service(_Archive(tmp_path / "store", tmp_path / "store"))
    queue = _PartQueue(wado, [(_location(k, len(d)), EXPLICIT_LE) for k, d in blobs], "bnd")
    [batch] = queue.units
    assert isinstance(batch, _Batch)
    body = b"".join(await wado._read_batch(batch))
    assert body == _expected(blobs, "bnd")
    assert calls == [([0, 1, 2, 3, 4], True, True), ([0, 4], False, False)]


def _evict_tree(root: Path) -> int:
    """Drop every file under ``root`` from the page cache (written to the disk first)."""
    count = 0
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            count += 1
    return count


def test_series_with_its_files_out_of_memory_is_whole_either_way(dw: DicomwebServer) -> None:
    """The real page cache, really emptied: both servers (zero-copy and not) read the
    series' files back from the disk and send them whole, byte for byte."""
    first, *rest = make_series("693_UNCI.dcm", 10)
    stored = {inst.sop: inst.data for inst in (first, *rest)}
    dw.client().store_instances([first.ds, *(i.ds for i in rest)])
    path = f"/studies/{first.study}/series/{first.series}"
    for base in (dw.url, dw.plain_url):
        assert _evict_tree(dw.spool.parent / "data" / "hot") >= 10
        r = httpx.get(base + path, timeout=60)
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(r.content))
        parts = multipart_parts(r.content, r.headers["content-type"])
        got = {str(pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID): p for _, p in parts}
        assert got == stored
        # One instance alone, as application/dicom (read whole, not as a batch).
        _evict_tree(dw.spool.parent / "data" / "hot")
        one = httpx.get(
            f"{base}{path}/instances/{first.sop}",
            headers={"Accept": "application/dicom"},
            timeout=60,
        )
        assert one.status_code == 200
        assert one.content == stored[first.sop]


async def test_frames_not_in_memory_are_read_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame request reads a hot file on the loop only when its spans' pages are in
    memory; otherwise the read goes to a worker thread."""
    from dataclasses import replace

    import dicomweb.frames as frames_module
    from dicomweb.frames import FrameService
    from dicomweb.media import FrameTarget
    from storage.model import FrameSpan

    [(key, data)] = _blobs(tmp_path / "store", 1)
    loc = replace(
        _location(key, len(data)),
        number_of_frames=2,
        frames=(FrameSpan(((0, 10),)), FrameSpan(((10, 5), (20, 3)))),
    )
    service = FrameService(_Archive(tmp_path / "store", tmp_path / "store"), None)  # type: ignore[arg-type]
    target = FrameTarget("application/octet-stream", EXPLICIT_LE, False, False)
    loop = threading.current_thread()
    reads: list[bool] = []
    real_read_spans = frames_module._read_spans

    def read_spans(path: Path, spans: list[tuple[tuple[int, int], ...]]) -> list[bytes]:
        reads.append(threading.current_thread() is loop)
        return real_read_spans(path, spans)

    monkeypatch.setattr(frames_module, "_read_spans", read_spans)
    # In memory: read right on the loop (no thread read).
    assert await service._frame_bytes(loc, [2, 1], target) == [
        data[10:15] + data[20:23],
        data[0:10],
    ]
    assert reads == []
    # The second frame's last fragment on the disk: the whole read goes to a thread.
    monkeypatch.setattr(
        frames_module, "in_memory", lambda _fd, length, offset: (offset, length) != (20, 3)
    )
    assert await service._frame_bytes(loc, [2, 1], target) == [
        data[10:15] + data[20:23],
        data[0:10],
    ]
    assert reads == [False]


async def test_zero_copy_body_closed_mid_batch_closes_its_files_at_once(tmp_path: Path) -> None:
    """The server closes the body iterator when the client goes away: the batch's files not
    yet handed over are closed then, not whenever the garbage collector gets to them."""
    blobs = _blobs(tmp_path / "store", 4)
    archive = _Archive(tmp_path / "store", tmp_path / "store")
    wado = _service(archive)
    queue = _PartQueue(wado, [(_location(k, len(d)), EXPLICIT_LE) for k, d in blobs], "bnd", True)
    fds = open_fds()
    await queue.prime()
    body = wado._multipart(queue, "bnd")
    async for item in body:
        if isinstance(item, OpenFile):
            os.close(item.fd)  # the first file, as the response would after sending it
            break
    await body.aclose()
    assert open_fds() == fds
