"""Child process for the crash tests: migrate a study and SIGKILL itself at a chosen point.

``python -m tests.storage_tiers.crash_child SETTINGS_JSON STUDY_UID TARGET POINT``. The kill
is ``os.kill(getpid(), SIGKILL)`` from inside a wrapped step, i.e. exactly what ``kill -9``
from outside does at that instant, but at a deterministic point.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from config.settings import StorageSettings
from storage.archive import open_archive
from storage.model import Tier


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _after(obj: Any, name: str, calls: int) -> None:
    """Kill the process right after the ``calls``-th completed call of ``obj.name``."""
    original = getattr(obj, name)
    count = 0

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        result = await original(*args, **kwargs)
        count += 1
        if count >= calls:
            _die()
        return result

    setattr(obj, name, wrapped)


def _partway(obj: Any, name: str, keep: int) -> None:
    """Kill the process after a bulk ``obj.name(keys)`` handled only its first ``keep``
    keys (an S3 DeleteObjects is per key, not atomic: a crash can land in the middle)."""
    original = getattr(obj, name)

    async def wrapped(keys: list[str], *args: Any, **kwargs: Any) -> Any:
        await original(keys[:keep], *args, **kwargs)
        _die()

    setattr(obj, name, wrapped)


def _before(obj: Any, name: str) -> None:
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        _die()

    setattr(obj, name, wrapped)


async def main(settings: StorageSettings, study_uid: str, target: Tier, point: str) -> None:
    archive = await open_archive(settings)
    tiers = archive.tiers
    assert tiers is not None
    if point == "after_copy":  # some copies made (upload or download+put), none flipped
        _after(tiers, "_copy_to_cold" if target is Tier.COLD else "_copy_to_hot", 2)
    elif point == "before_flip":  # all copies verified, the index still names the source
        _before(tiers, "_flip")
    elif point == "after_flip":  # the flip committed, no source copy deleted yet
        _after(tiers, "_flip", 1)
    elif point == "mid_delete":  # some source copies deleted
        if target is Tier.COLD:
            _after(tiers.hot, "delete", 2)
        else:  # cold copies go in bulk (S3 DeleteObjects)
            _partway(tiers.cold, "delete_many", 2)
    else:
        raise SystemExit(f"unknown crash point {point}")
    await archive.migrate_study(study_uid, target)
    print("migration finished without reaching the crash point", flush=True)
    await archive.close()


if __name__ == "__main__":
    raw = json.loads(sys.argv[1])
    raw["data_dir"] = Path(raw["data_dir"])
    asyncio.run(main(StorageSettings(**raw), sys.argv[2], Tier(sys.argv[3]), sys.argv[4]))
