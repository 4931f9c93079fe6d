"""The hot tier: blobs as files under ``<data_dir>/hot`` on a local (SSD) filesystem.

``put_file`` makes a blob durable before it returns: the file's data is fsync'd, it is
renamed into place (atomic on POSIX), and the directory entry is fsync'd, so an index row
never names a blob a crash could take back. ``adopt_files`` does the same for many files
whose data the caller already fsync'd (ingest does that while the request is still arriving):
renames them in, then fsyncs each folder once. Reads use ``os.pread`` in worker threads so the
event loop never blocks on disk and concurrent readers share one descriptor safely.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import cast

from storage.errors import NotFound, OutOfResources, StorageError, StoreUnavailable

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_TMP_DIR = ".tmp"


def will_need(paths: Sequence[Path]) -> None:
    """Ask the kernel to start reading these files into the page cache and return at once
    (``posix_fadvise(WILLNEED)``): readers that come later find their pages there instead of
    waiting on the disk one file after the other. Best effort: a missing file (migrated or
    deleted meanwhile) or a refusal is skipped."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def in_memory(fd: int, size: int, offset: int = 0) -> bool:
    """Are the first and last pages of ``size`` bytes at ``offset`` of this open file in the
    page cache?

    Asked without waiting for the disk: a one-byte ``preadv2(RWF_NOWAIT)`` at each end fails
    with EAGAIN where the page is not there (Linux ≥ 4.14). Pages read in and evicted
    together, so the ends stand for the middle. Where the question cannot be asked (another
    OS, a filesystem without RWF_NOWAIT) the answer is True: the caller reads as it would
    have anyway."""
    if _RWF_NOWAIT is None or size <= 0:
        return True
    probe = bytearray(1)
    try:
        for at in (offset, offset + size - 1):
            os.preadv(fd, [probe], at, _RWF_NOWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def page_in(files: Sequence[tuple[int, int]]) -> None:
    """Wait until these open files' first ``size`` bytes are in the page cache, then close
    the descriptors (the caller hands over duplicates, so it may close its own meanwhile).

    For a worker thread: it blocks on the disk so the event loop does not. Best effort: a
    reader that follows reports whatever is wrong with a file."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd, size in files:
            try:
                _read_in(null, fd, size)
            except OSError:
                pass
            finally:
                os.close(fd)
    finally:
        os.close(null)


def _read_in(null: int, fd: int, size: int) -> None:
    """Bring the pages in by sendfile(2) to /dev/null, which takes page references and
    copies nothing; where /dev/null refuses spliced pages, by reading into a scratch buffer."""
    offset = 0
    try:
        while offset < size and (sent := os.sendfile(null, fd, offset, size - offset)):
            offset += sent
    except OSError:
        scratch = bytearray(min(size - offset, 1 << 20))
        while offset < size and (got := os.preadv(fd, [scratch], offset)):
            offset += got


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None  # not Linux
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages to the disk now and return
    without waiting (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so that an ``fsync``
    a little later finds most of them written and waits for less. Best effort: a no-op where
    the call does not exist, and its failures are ignored. It makes nothing durable by itself
    (no metadata, no cache flush): the ``fsync`` still does that."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def translate_os_error(exc: OSError, what: str) -> StorageError:
    """Map an OSError to the storage error tree (ENOSPC/EDQUOT → OutOfResources)."""
    if exc.errno in _NO_SPACE:
        return OutOfResources(f"{what}: {os.strerror(exc.errno or 0)}")
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{what}: no such blob")
    return StoreUnavailable(f"{what}: {exc}")


class HotFileReader:
    """An open hot-tier blob (implements storage.blobs.BlobReader)."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.local_path: Path | None = path
        self.size = size
        self._fd: int | None = fd

    def _pread(self, offset: int, length: int) -> bytes:
        if self._fd is None:
            raise StoreUnavailable("blob reader is closed")
        parts: list[bytes] = []
        while length > 0:
            chunk = os.pread(self._fd, min(length, 1 << 24), offset)
            if not chunk:
                break
            parts.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(parts)

    async def read_range(self, offset: int, length: int) -> bytes:
        try:
            return await asyncio.to_thread(self._pread, offset, length)
        except OSError as exc:
            raise translate_os_error(exc, str(self.local_path)) from exc

    async def iter_chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        offset = 0
        while offset < self.size:
            chunk = await self.read_range(offset, min(chunk_size, self.size - offset))
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    async def read_all(self) -> bytes:
        return await self.read_range(0, self.size)

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class HotFilesystemStore:
    """Blob store on a local directory (implements storage.blobs.BlobStore)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / _TMP_DIR

    def path_of(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/") or key.startswith(_TMP_DIR):
            raise NotFound(f"invalid blob key {key!r}")
        return self.root / key

    def _put_sync(self, key: str, source: Path) -> None:
        target = self.path_of(key)
        new_folder = not target.parent.is_dir()
        target.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        staged = self._tmp / f"{uuid.uuid4().hex}.part"
        try:
            try:
                # Same filesystem: take the file over without copying its bytes.
                os.link(source, staged)
            except OSError:
                shutil.copyfile(source, staged)
            fd = os.open(staged, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.replace(staged, target)
            except FileNotFoundError:
                # A concurrent delete removed the series folder once it was empty.
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, target)
            _fsync_dir(target.parent)
            if new_folder:
                # New study/series folders must survive a crash too: their entries live in
                # the parent folders.
                folder = target.parent.parent
                while True:
                    _fsync_dir(folder)
                    if folder == self.root or self.root not in folder.parents:
                        break
                    folder = folder.parent
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        # The blob is durable; the caller's file has served its purpose.
        source.unlink(missing_ok=True)

    def _adopt_sync(self, items: Sequence[tuple[str, Path]]) -> list[StorageError | None]:
        errors: list[StorageError | None] = [None] * len(items)
        folders: dict[Path, list[int]] = {}
        new_folders: set[Path] = set()
        for i, (key, source) in enumerate(items):
            try:
                target = self.path_of(key)
                if not target.parent.is_dir():
                    new_folders.add(target.parent)
                    target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(source, target)
                except FileNotFoundError:
                    if not source.exists():
                        raise
                    # A concurrent delete removed the series folder once it was empty.
                    new_folders.add(target.parent)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(source, target)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    # Another filesystem: copy, then the durable put (source stays ours).
                    self._put_sync(key, source)
                folders.setdefault(target.parent, []).append(i)
            except StorageError as exc:
                errors[i] = exc
            except OSError as exc:
                errors[i] = translate_os_error(exc, f"storing blob {key}")
        # New study/series folders must survive a crash too: their entries live in the
        # parent folders, up to the root.
        parents: set[Path] = set()
        for folder in new_folders:
            parent = folder.parent
            while parent != self.root and self.root in parent.parents:
                parents.add(parent)
                parent = parent.parent
            parents.add(self.root)
        for folder in sorted(parents - folders.keys(), key=lambda p: len(p.parts), reverse=True):
            folders[folder] = []
        for folder, members in folders.items():
            try:
                _fsync_dir(folder)
            except OSError as exc:
                for i in members:
                    errors[i] = translate_os_error(exc, f"storing blob {items[i][0]}")
                if not members:
                    # A parent folder's entry may be lost: none below it is durable.
                    for j, (key, _) in enumerate(items):
                        if folder in self.path_of(key).parents:
                            errors[j] = translate_os_error(exc, f"storing blob {key}")
        return errors

    async def adopt_files(self, items: Sequence[tuple[str, Path]]) -> list[StorageError | None]:
        """Move files whose data the caller has fsync'd to the given keys, durably: each
        renamed into place, then each folder fsync'd once. Per item, None or the error that
        kept it from being stored (its file then stays where it was, or is removed)."""
        return await asyncio.to_thread(self._adopt_sync, items)

    async def put_file(self, key: str, source: Path) -> None:
        try:
            await asyncio.to_thread(self._put_sync, key, source)
        except OSError as exc:
            raise translate_os_error(exc, f"storing blob {key}") from exc

    def _open_sync(self, key: str) -> HotFileReader:
        path = self.path_of(key)
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        return HotFileReader(path, fd, size)

    async def open(self, key: str) -> HotFileReader:
        try:
            return await asyncio.to_thread(self._open_sync, key)
        except OSError as exc:
            raise translate_os_error(exc, f"opening blob {key}") from exc

    def _delete_sync(self, key: str) -> None:
        path = self.path_of(key)
        path.unlink(missing_ok=True)
        # Drop now-empty series/study directories; a concurrent put recreates them.
        for parent in (path.parent, path.parent.parent):
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self._delete_sync, key)
        except OSError as exc:
            raise translate_os_error(exc, f"deleting blob {key}") from exc

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_of(key).is_file)

    def _list_sync(self, prefix: str) -> list[str]:
        keys: list[str] = []
        if not self.root.is_dir():
            return keys
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != _TMP_DIR]
                rel_dir = ""
            for name in filenames:
                key = f"{rel_dir}/{name}" if rel_dir else name
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        return keys

    async def iter_keys(self, prefix: str = "") -> AsyncIterator[str]:
        for key in await asyncio.to_thread(self._list_sync, prefix):
            yield key

    async def file_sha256(self, key: str) -> str:
        """SHA-256 of a blob's bytes (hex), read in a worker thread."""
        import hashlib

        def _hash() -> str:
            digest = hashlib.sha256()
            with open(self.path_of(key), "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            return digest.hexdigest()

        try:
            return await asyncio.to_thread(_hash)
        except OSError as exc:
            raise translate_os_error(exc, f"reading blob {key}") from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
