"""The spool folder (``<data>/spool``): request bodies and import copies waiting for ingest.

Everything in it is transient. A process killed mid-request (SIGKILL, power cut) leaves its
files behind; ``arca serve`` removes entries older than :data:`STALE_AFTER_SECONDS` when it
starts. Younger entries may belong to another live process on the same data folder (an
``arca import``, another node), so they are left alone.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from config.settings import Settings

log = logging.getLogger("arca.spool")

STALE_AFTER_SECONDS = 6 * 3600.0


def spool_dir(settings: Settings) -> Path:
    """Where request bodies and import copies wait for ingest (inside the data folder, on the
    hot tier's filesystem, so ingest moves a file instead of copying it)."""
    return settings.storage.data_dir / "spool"


def purge_stale(spool: Path, older_than: float = STALE_AFTER_SECONDS) -> int:
    """Remove spool entries (files, folders) not modified for ``older_than`` seconds."""
    if not spool.is_dir():
        return 0
    cutoff = time.time() - older_than
    entries = list(spool.rglob("*"))
    # Folder ages are read before any file goes: removing a file refreshes its folder's mtime.
    stale_folders = [p for p in entries if p.is_dir() and _older(p, cutoff)]
    removed = 0
    for entry in entries:
        if entry.is_file() and _older(entry, cutoff):
            try:
                entry.unlink()
                removed += 1
            except OSError:  # gone meanwhile, or not ours to remove: leave it
                continue
    for folder in sorted(stale_folders, reverse=True):  # deepest first; only empty ones go
        try:
            folder.rmdir()
        except OSError:
            continue
    if removed:
        log.info("removed %d stale spool files (older than %.0f h)", removed, older_than / 3600)
    return removed


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except OSError:
        return False
