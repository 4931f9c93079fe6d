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
