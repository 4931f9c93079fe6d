"""The archive facade: the one entry point ``dicomweb`` and ``dimse`` use.

It ties the index and the blob tiers together and owns the three paths of ARCHITECTURE.md:
ingest (:meth:`Archive.ingest`), query (:meth:`Archive.search`), retrieve
(:meth:`Archive.locate`, :meth:`Archive.open_blob`, :meth:`Archive.instance_metadata`).
``server`` constructs it; everything else receives it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from storage.blobs import BlobReader
from storage.model import IngestOutcome, InstanceLocation
from storage.query import Query, QueryResult

BULKDATA_BASE = "arca-base:"
"""Prefix of every BulkDataURI in precomputed metadata. The HTTP layer replaces
``"arca-base:`` with ``"<base URL of the DICOMweb root>`` when it serves metadata, so the URIs
follow the request's host and Forwarded / X-Forwarded-* headers without re-rendering JSON.
Example stored value: ``arca-base:/studies/1.2/series/3.4/instances/5.6/bulkdata/7FE00010``."""


@dataclass(frozen=True)
class VerifyReport:
    """What ``arca verify`` found."""

    instances_checked: int = 0
    missing: list[str] = field(default_factory=list)
    """SOPInstanceUIDs whose blob is gone."""
    corrupt: list[str] = field(default_factory=list)
    """SOPInstanceUIDs whose blob fails its SHA-256."""
    orphans: list[str] = field(default_factory=list)
    """Blob keys no index row names (e.g. left by a crash between blob and commit)."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt)


class ArchiveService(Protocol):
    """What the service layers (dicomweb, dimse) may call. Implemented by storage.Archive."""

    async def ingest(self, path: Path, *, expected_study_uid: str | None = None) -> IngestOutcome:
        """Store the Part-10 file (or bare data set) at ``path``.

        The file is consumed (moved into the hot tier or deleted). Parses the header once,
        validates, writes the blob durably, then commits the index rows, the QIDO attributes,
        the precomputed DICOM JSON metadata and the frame spans in one transaction.

        Raises IngestRejected (with a StowFailure: CANNOT_UNDERSTAND for files that do not
        parse or lack Study/Series/SOP Instance UIDs, SOP_CLASS_NOT_SUPPORTED,
        DATASET_DOES_NOT_MATCH_SOP_CLASS also when ``expected_study_uid`` differs,
        DuplicateInstance), OutOfResources, StoreUnavailable. On any error nothing is visible.
        """
        ...

    async def search(self, query: Query) -> QueryResult: ...

    async def locate(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[InstanceLocation]:
        """Retrieve plans, ordered by series then InstanceNumber then SOPInstanceUID.

        Raises NotFound when nothing matches.
        """
        ...

    async def instance_metadata(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> list[bytes]:
        """Precomputed DICOM JSON objects (UTF-8, one per instance, same order as locate),
        BulkDataURIs prefixed with :data:`BULKDATA_BASE`. Raises NotFound."""
        ...

    async def open_blob(self, location: InstanceLocation) -> BlobReader:
        """Open the instance's bytes on whichever tier holds them. Raises NotFound,
        StoreUnavailable, CorruptBlob (when a verified read fails its checksum)."""
        ...

    async def delete(
        self, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
    ) -> int:
        """Remove index rows (one transaction) then blobs; returns instances removed.
        Raises NotFound."""
        ...

    async def verify(self, study_uid: str | None = None) -> VerifyReport: ...
