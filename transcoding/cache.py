"""The on-disk cache of transcoded renditions: keyed by (cache key, transfer syntax), LRU by size.

Files live flat under one directory, named by a SHA-256 of the key, written atomically (temp
file in the same directory, fsync, rename) so a reader never sees half a rendition and a crash
leaves at most a stray ``.tmp``. Recency is the file's mtime (touched on every hit), so the
LRU order survives restarts; the in-memory index is rebuilt from the directory at start-up.
Methods do blocking file I/O: call them from a thread (``asyncio.to_thread``), not the loop.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

_SUFFIX = ".rendition"


class RenditionCache:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self._dir = directory
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()
        """File name -> size, least recently used first."""
        self._total = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._load()

    @property
    def total_bytes(self) -> int:
        return self._total

    def _load(self) -> None:
        found: list[tuple[float, str, int]] = []
        for entry in os.scandir(self._dir):
            if entry.name.endswith(".tmp"):
                Path(entry.path).unlink(missing_ok=True)  # left by a crash mid-write
            elif entry.name.endswith(_SUFFIX) and entry.is_file():
                st = entry.stat()
                found.append((st.st_mtime, entry.name, st.st_size))
        for _, name, size in sorted(found):
            self._entries[name] = size
            self._total += size

    @staticmethod
    def _name(key: str, transfer_syntax_uid: str) -> str:
        digest = hashlib.sha256(f"{key}\x00{transfer_syntax_uid}".encode()).hexdigest()
        return digest + _SUFFIX

    def get(self, key: str, transfer_syntax_uid: str) -> bytes | None:
        name = self._name(key, transfer_syntax_uid)
        path = self._dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                if name in self._entries:
                    self._total -= self._entries.pop(name)
            return None
        os.utime(path)  # recency survives restarts
        with self._lock:
            if name in self._entries:
                self._entries.move_to_end(name)
        return data

    def put(self, key: str, transfer_syntax_uid: str, data: bytes) -> None:
        if len(data) > self._max_bytes:
            return  # would evict everything and still not fit
        name = self._name(key, transfer_syntax_uid)
        path = self._dir / name
        tmp = self._dir / f"{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with self._lock:
            if name in self._entries:
                self._total -= self._entries.pop(name)
            self._entries[name] = len(data)
            self._total += len(data)
            victims = []
            while self._total > self._max_bytes and self._entries:
                victim, size = self._entries.popitem(last=False)
                self._total -= size
                victims.append(victim)
        for victim in victims:
            (self._dir / victim).unlink(missing_ok=True)

    def __contains__(self, item: tuple[str, str]) -> bool:
        with self._lock:
            return self._name(*item) in self._entries
