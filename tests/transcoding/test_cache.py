"""The rendition cache: bounded by size, least recently used out first, atomic, restartable."""

from __future__ import annotations

import os
from pathlib import Path

from transcoding.cache import RenditionCache

J2K = "1.2.840.10008.1.2.4.90"
JLS = "1.2.840.10008.1.2.4.80"


def test_hit_and_miss(tmp_path: Path) -> None:
    cache = RenditionCache(tmp_path, 1000)
    assert cache.get("a", J2K) is None
    cache.put("a", J2K, b"x" * 10)
    assert cache.get("a", J2K) == b"x" * 10
    assert cache.get("a", JLS) is None  # another syntax is another rendition
    assert ("a", J2K) in cache


def test_least_recently_used_is_evicted_first(tmp_path: Path) -> None:
    cache = RenditionCache(tmp_path, 300)
    for key in ("a", "b", "c"):
        cache.put(key, J2K, key.encode() * 100)
    assert cache.get("a", J2K) is not None  # a is now the most recent
    cache.put("d", J2K, b"d" * 100)
    assert cache.get("b", J2K) is None  # b was the least recently used
    assert {k for k in "acd" if cache.get(k, J2K) is not None} == {"a", "c", "d"}
    assert cache.total_bytes <= 300
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) == cache.total_bytes


def test_oversized_rendition_is_not_cached(tmp_path: Path) -> None:
    cache = RenditionCache(tmp_path, 100)
    cache.put("small", J2K, b"s" * 50)
    cache.put("huge", J2K, b"h" * 101)
    assert cache.get("huge", J2K) is None
    assert cache.get("small", J2K) == b"s" * 50


def test_writes_leave_no_temp_files_and_restart_keeps_lru_order(tmp_path: Path) -> None:
    cache = RenditionCache(tmp_path, 300)
    for i, key in enumerate(("a", "b", "c")):
        cache.put(key, J2K, key.encode() * 100)
        name = RenditionCache._name(key, J2K)
        os.utime(tmp_path / name, (1_000_000 + i, 1_000_000 + i))
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "stray.rendition.123.tmp").write_bytes(b"half a rendition")  # a crash mid-write
    restarted = RenditionCache(tmp_path, 300)
    assert not list(tmp_path.glob("*.tmp"))
    assert restarted.total_bytes == 300
    restarted.put("d", J2K, b"d" * 100)  # evicts the oldest by mtime: a
    assert restarted.get("a", J2K) is None
    assert restarted.get("b", J2K) == b"b" * 100
