"""What C-MOVE and C-GET share: which instances an identifier names, and in which transfer
syntax each can go to a peer (PS3.4 C.4.2, C.4.3).

An identifier is resolved with the same query model as C-FIND (at the requested level, with
the UIDs of the levels above as return keys) and then through ``Archive.locate`` to retrieve
plans. Each instance is sent in its stored transfer syntax when the peer accepted a
presentation context for it; otherwise it is transcoded to a syntax the peer accepted
(lossless and native targets first); otherwise its sub-operation fails.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset

from conformance.transfer_syntaxes import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    TRANSFER_SYNTAXES,
    is_native,
)
from dimse.identifiers import match_keys
from storage.archive import ArchiveService
from storage.errors import InvalidQuery, NotFound
from storage.model import InstanceLocation
from storage.query import Query, QueryLevel
from transcoding.service import TranscoderService

STUDY_UID = 0x0020_000D
SERIES_UID = 0x0020_000E
SOP_UID = 0x0008_0018
MAX_SUBOPERATIONS = 65535
"""Number of ... Sub-operations are US (PS3.7 Annex C): no more can be counted."""

NATIVE_FALLBACK = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)


async def resolve(
    archive: ArchiveService, identifier: Dataset, level: QueryLevel, *, patient_root: bool
) -> list[InstanceLocation]:
    """Every instance the retrieve identifier names, in series / instance order."""
    keys = match_keys(identifier)
    # PATIENT level retrieves every study of the matching patients (PS3.4 C.6.1.2.2).
    search_level = QueryLevel.STUDY if level is QueryLevel.PATIENT else level
    if not any(k.tag in (STUDY_UID, SERIES_UID, SOP_UID, 0x0010_0020) for k in keys):
        raise InvalidQuery("a retrieve identifier needs a unique key (PS3.4 C.4.2.2.1)")
    query = Query(
        level=search_level,
        keys=keys,
        include=frozenset({STUDY_UID, SERIES_UID, SOP_UID}),
        patient_root=patient_root,
    )
    result = await archive.search(query)
    wanted: dict[tuple[str, str | None], set[str] | None] = {}
    for match in result.matches:
        study = str(match.get("StudyInstanceUID", "") or "")
        if not study:
            continue
        series = str(match.get("SeriesInstanceUID", "") or "") or None
        if search_level is QueryLevel.STUDY:
            wanted[(study, None)] = None
        elif search_level is QueryLevel.SERIES:
            wanted[(study, series)] = None
        else:
            sops = wanted.setdefault((study, series), set())
            if sops is not None:
                sops.add(str(match.get("SOPInstanceUID", "")))
    locations: list[InstanceLocation] = []
    for (study, series), sops in wanted.items():
        try:
            found = await archive.locate(study, series)
        except NotFound:
            continue  # deleted between search and locate
        locations += [loc for loc in found if sops is None or loc.sop_instance_uid in sops]
    return locations


async def read_instance(archive: ArchiveService, location: InstanceLocation) -> bytes:
    """The stored Part-10 bytes of one instance, from whichever tier holds them."""
    reader = await archive.open_blob(location)
    try:
        return await reader.read_all()
    finally:
        await reader.close()


def parse_part10(data: bytes) -> Dataset:
    """A Dataset over Part-10 bytes, values left raw so re-encoding reproduces them."""
    return pydicom.dcmread(io.BytesIO(data))


def placeholder(location: InstanceLocation) -> Dataset:
    """A stand-in for an instance that cannot be read: pynetdicom fails its sub-operation
    (it has no File Meta to pick a context from) and lists its UID as failed."""
    ds = Dataset()
    ds.SOPClassUID = location.sop_class_uid
    ds.SOPInstanceUID = location.sop_instance_uid
    ds.file_meta = FileMetaDataset()
    return ds


@dataclass(frozen=True)
class SyntaxChoice:
    """How one instance goes to the peer."""

    transfer_syntax: str | None
    """None: no accepted context can carry it (the sub-operation fails)."""
    transcode: bool


def choose_syntax(
    location: InstanceLocation,
    accepted: Iterable[str],
    transcoder: TranscoderService | None,
) -> SyntaxChoice:
    """Stored syntax if accepted; else native (pynetdicom re-encodes native syntaxes among
    themselves); else the first accepted syntax the transcoder can produce, lossless first."""
    accepted = list(dict.fromkeys(accepted))
    stored = location.transfer_syntax_uid
    if stored in accepted:
        return SyntaxChoice(stored, False)
    native_accepted = [ts for ts in accepted if is_native(ts)]
    if is_native(stored) and native_accepted:
        return SyntaxChoice(native_accepted[0], False)
    if transcoder is None or not transcoder.can_decode(stored):
        return SyntaxChoice(None, False)

    def rank(ts: str) -> int:
        info = TRANSFER_SYNTAXES.get(ts)
        if info is None:
            return 3
        if not info.encapsulated:
            return 0 if ts == EXPLICIT_VR_LITTLE_ENDIAN else 1
        # Never make a lossless original lossy behind the peer's back unless that is all
        # it accepts.
        return 2 if not info.lossy else 3

    for ts in sorted(accepted, key=rank):
        if transcoder.can_encode(ts):
            return SyntaxChoice(ts, True)
    return SyntaxChoice(None, False)
