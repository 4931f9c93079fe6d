"""The hot filesystem tier on its own: durability steps, cross-device moves, bad keys."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from storage.errors import NotFound
from storage.hot import HotFilesystemStore


async def test_put_open_delete(tmp_path: Path) -> None:
    store = HotFilesystemStore(tmp_path / "hot")
    source = tmp_path / "in.bin"
    source.write_bytes(b"0123456789" * 1000)
    await store.put_file("st/se/sop-0011223344556677.dcm", source)
    assert not source.exists()  # taken over
    assert await store.exists("st/se/sop-0011223344556677.dcm")
    reader = await store.open("st/se/sop-0011223344556677.dcm")
    try:
        assert reader.size == 10_000
        assert await reader.read_range(9_995, 100) == b"56789"  # short at the end
        assert len(b"".join([c async for c in reader.iter_chunks(333)])) == 10_000
    finally:
        await reader.close()
    assert [k async for k in store.iter_keys("st/")] == ["st/se/sop-0011223344556677.dcm"]
    await store.delete("st/se/sop-0011223344556677.dcm")
    await store.delete("st/se/sop-0011223344556677.dcm")  # idempotent
    assert not (tmp_path / "hot" / "st").exists()  # empty study/series folders go too
    with pytest.raises(NotFound):
        await store.open("st/se/sop-0011223344556677.dcm")


async def test_cross_device_source_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INJECTED: os.link fails with EXDEV, as it does when the spool is on another
    filesystem; the store then copies the bytes."""
    store = HotFilesystemStore(tmp_path / "hot")
    source = tmp_path / "in.bin"
    source.write_bytes(b"abc" * 100)

    def exdev(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "link", exdev)
    await store.put_file("a/b/c.dcm", source)
    assert (tmp_path / "hot" / "a" / "b" / "c.dcm").read_bytes() == b"abc" * 100
    assert not source.exists()


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path", "a/../../b", ".tmp/x", ""])
async def test_keys_cannot_escape_the_tier(tmp_path: Path, key: str) -> None:
    store = HotFilesystemStore(tmp_path / "hot")
    with pytest.raises(NotFound):
        await store.open(key)


def test_start_writeback_is_a_harmless_hint(tmp_path: Path) -> None:
    """Linux has sync_file_range: the hint is really made there (ingest relies on it to start
    the disk before its fsync); on any descriptor, even a bad one, it never raises."""
    import sys

    from storage import hot

    if sys.platform == "linux":
        assert hot._SYNC_FILE_RANGE is not None
    path = tmp_path / "dirty.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * (1 << 20))
        hot.start_writeback(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * (1 << 20)
    hot.start_writeback(fd)  # closed: EBADF is ignored


def _evicted(path: Path, data: bytes) -> None:
    """``path`` holding ``data``, written to the disk and dropped from the page cache."""
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # clean pages are the ones the kernel can drop
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_in_memory_tells_pages_on_disk_and_page_in_reads_them(tmp_path: Path) -> None:
    """The test data folder is on a disk filesystem (ext4 here), where dropped pages are
    really gone and RWF_NOWAIT reads say so."""
    from storage.hot import in_memory, page_in

    data = os.urandom(3 << 20)
    path = tmp_path / "blob.dcm"
    _evicted(path, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not in_memory(fd, len(data)), "the evicted file's pages are still in memory"
        before = _open_fds()
        page_in([(os.dup(fd), len(data))])
        assert _open_fds() == before  # it closed the duplicate it was given
        assert in_memory(fd, len(data))
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)
    assert in_memory(os.open(os.devnull, os.O_RDONLY), 0)  # nothing to read: nothing to wait for


def test_page_in_falls_back_to_reading_when_sendfile_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INJECTED: sendfile(2) to /dev/null refused (EINVAL), as on a system whose /dev/null
    does not take spliced pages: the pages are read into a scratch buffer instead."""
    from storage import hot

    def refuse(*_args: object) -> int:
        raise OSError(errno.EINVAL, "sendfile refused for this test")

    monkeypatch.setattr(hot.os, "sendfile", refuse)
    data = os.urandom(5 << 20)
    path = tmp_path / "blob.dcm"
    _evicted(path, data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert not hot.in_memory(fd, len(data))
        before = _open_fds()
        hot.page_in([(os.dup(fd), len(data))])
        assert _open_fds() == before
        assert hot.in_memory(fd, len(data))
    finally:
        os.close(fd)


def test_in_memory_answers_true_where_it_cannot_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    """INJECTED: no RWF_NOWAIT (another OS) or a filesystem refusing it: the caller reads as
    it always did, so the answer is True."""
    from storage import hot

    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        monkeypatch.setattr(hot, "_RWF_NOWAIT", None)
        assert hot.in_memory(fd, 100)
        monkeypatch.setattr(hot, "_RWF_NOWAIT", 8)

        def unsupported(*_args: object) -> int:
            raise OSError(errno.EOPNOTSUPP, "not supported")

        monkeypatch.setattr(hot.os, "preadv", unsupported)
        assert hot.in_memory(fd, 100)
    finally:
        os.close(fd)
