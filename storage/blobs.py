"""The blob store seam: where instance bytes live, by key, on one tier.

Keys look like ``{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}-{sha256[:16]}.dcm``
so a study is one prefix (tier migration moves prefixes) and a replacement with other bytes
never overwrites the blob a reader may be streaming.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol


class BlobReader(Protocol):
    """An open blob. Readers hold no lock: blobs are immutable once put."""

    size: int
    local_path: Path | None
    """The file on the hot tier (for zero-copy serving); None for remote tiers."""

    async def read_range(self, offset: int, length: int) -> bytes: ...

    def iter_chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]: ...

    async def read_all(self) -> bytes: ...

    async def close(self) -> None: ...


class BlobStore(Protocol):
    """One tier of blob storage (hot filesystem, cold S3-compatible object store)."""

    async def put_file(self, key: str, source: Path) -> None:
        """Make ``source``'s bytes durable under ``key`` (the file may be moved away).

        On return the blob survives a crash (fsync'd file and directory, or an object store's
        completed PUT). Raises OutOfResources on a full disk, StoreUnavailable when the store
        cannot be reached; on failure nothing is left under ``key``.
        """
        ...

    async def open(self, key: str) -> BlobReader:
        """Raises NotFound when there is no such blob."""
        ...

    async def delete(self, key: str) -> None:
        """Idempotent: deleting a missing blob is not an error."""
        ...

    async def exists(self, key: str) -> bool: ...

    def iter_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every key under ``prefix`` (for ``arca verify``'s orphan search)."""
        ...
