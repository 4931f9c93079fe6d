"""Reads that may run on the event loop because they cannot block: page-cache hits.

A read of a few hundred KiB from the page cache costs less than a hop to a worker thread, so
retrieves read small hot-tier files right on the loop. When the file is not in the page cache
(a cold start, memory pressure, a host's proactive reclaim), that read would wait on the disk
and stall every connection the loop serves. ``preadv2(RWF_NOWAIT)`` (Linux 4.14) answers
EAGAIN instead of waiting: such a read goes to a worker thread.
"""

from __future__ import annotations

import os

_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def pread_cached(fd: int, length: int, offset: int) -> bytes | bytearray | None:
    """``length`` bytes at ``offset`` if the page cache holds all of them, else None (read
    them where blocking is fine). Where RWF_NOWAIT does not exist, a plain read."""
    if _NOWAIT is None:
        return os.pread(fd, length, offset)
    buf = bytearray(length)
    try:
        got = os.preadv(fd, [buf], offset, _NOWAIT)
    except BlockingIOError:
        return None
    except OSError:
        # EOPNOTSUPP: a filesystem without non-blocking reads; the blocking path reads it.
        return None
    return buf if got == length else None
