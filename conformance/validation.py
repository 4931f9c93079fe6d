"""Fatal checks an object must pass before it is stored (STOW-RS / C-STORE ingest).

Each check names the failure the standard assigns to it (PS3.4 B.2.3 C-STORE statuses, reused
as STOW-RS FailureReason by PS3.18 §10.5.3). Anything not fatal is left to QC findings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from conformance.sop_classes import is_storage_sop_class
from conformance.statuses import StowFailure

# PS3.5 §9.1: components of digits without leading zeros, separated by '.', at most 64 chars.
# Leading zeros are tolerated: real-world objects carry them and their UIDs are still unique.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

REQUIRED_UIDS = (
    ("StudyInstanceUID", 0x0020_000D),
    ("SeriesInstanceUID", 0x0020_000E),
    ("SOPInstanceUID", 0x0008_0018),
    ("SOPClassUID", 0x0008_0016),
)


@dataclass(frozen=True)
class RequestedIdentity:
    """What a store request itself says about the object it carries, for
    :func:`check_identity` to hold the object to; None where the request says nothing."""

    study_uid: str | None = None
    """The study a STOW-RS request addressed (``POST /studies/{study}``, PS3.18 §10.5.1)."""
    sop_class_uid: str | None = None
    """The Affected SOP Class UID of a C-STORE request (PS3.7 §9.1.1.1)."""


ANY_IDENTITY = RequestedIdentity()
"""A request that says nothing about its object (an import, a C-STORE of another kind)."""


@dataclass(frozen=True)
class FatalProblem:
    """Why an object must be refused, in the standard's terms and in words."""

    failure: StowFailure
    message: str


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


def uid_text(ds: Dataset, tag: int) -> str | None:
    """A UID element's text as read, without trailing NULs and spaces; None when absent.

    A UID's bytes are its text (PS3.5 §9.1: ASCII digits and '.'), so an element still raw
    is decoded here instead of being converted by pydicom."""
    elem = ds.get_item(tag) if tag in ds else None
    if elem is None or elem.value is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip("\x00 ")


def check_identity(ds: Dataset, requested: RequestedIdentity = ANY_IDENTITY) -> FatalProblem | None:
    """UIDs, SOP class, File Meta agreement, and what the request said of the object."""
    sop_class = uid_text(ds, 0x0008_0016) or ""
    # PS3.4 B.2.3: the data set's SOP Class UID must be the one the command names. A value
    # that is not even a UID means the data set is damaged: the checks below say so.
    expected = requested.sop_class_uid
    if expected is not None and is_valid_uid(sop_class) and sop_class != expected:
        return FatalProblem(
            StowFailure.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"data set SOP class {sop_class} differs from the request's {expected}",
        )
    for keyword, tag in REQUIRED_UIDS:
        value = uid_text(ds, tag)
        if not value:
            return FatalProblem(StowFailure.CANNOT_UNDERSTAND, f"{keyword} is missing")
        if not is_valid_uid(value):
            return FatalProblem(StowFailure.CANNOT_UNDERSTAND, f"{keyword} {value!r} is not a UID")
    sop_instance = uid_text(ds, 0x0008_0018) or ""
    if not is_storage_sop_class(sop_class):
        return FatalProblem(
            StowFailure.SOP_CLASS_NOT_SUPPORTED,
            f"SOPClassUID {sop_class} is not a storage SOP class",
        )
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        # PS3.10 §7.1: the File Meta Information must name the same class and instance.
        media_class = uid_text(meta, 0x0002_0002)
        media_instance = uid_text(meta, 0x0002_0003)
        if media_class and media_class != sop_class:
            return FatalProblem(
                StowFailure.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"MediaStorageSOPClassUID {media_class} differs from SOPClassUID {sop_class}",
            )
        if media_instance and media_instance != sop_instance:
            return FatalProblem(
                StowFailure.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"MediaStorageSOPInstanceUID {media_instance} differs from "
                f"SOPInstanceUID {sop_instance}",
            )
    study = uid_text(ds, 0x0020_000D) or ""
    if requested.study_uid is not None and study != requested.study_uid:
        # PS3.18 §10.5.3: an instance of another study than the request's target.
        return FatalProblem(
            StowFailure.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"StudyInstanceUID {study} differs from the requested study {requested.study_uid}",
        )
    return None


def expected_native_pixel_length(ds: Dataset) -> int | None:
    """Bytes native Pixel Data must hold (PS3.5 §8.1.1), or None when unknown (see
    :func:`native_pixel_length`). Only meaningful for native (uncompressed) syntaxes."""
    try:
        rows = int(ds[0x0028_0010].value)
        columns = int(ds[0x0028_0011].value)
        bits = int(ds[0x0028_0100].value)
        samples = int(ds.get(0x0028_0002).value) if 0x0028_0002 in ds else 1
        frames_elem = ds.get(0x0028_0008)
        frames = int(frames_elem.value) if frames_elem is not None and frames_elem.value else 1
    except (KeyError, TypeError, ValueError):
        return None
    photometric = ds.get(0x0028_0004)
    return native_pixel_length(
        rows, columns, samples, bits, frames, "" if photometric is None else photometric.value
    )


def native_pixel_length(
    rows: int, columns: int, samples: int, bits: int, frames: int, photometric: object
) -> int:
    """Rows × Columns × SamplesPerPixel × BitsAllocated / 8 × NumberOfFrames, rounded up to
    whole bytes (BitsAllocated 1 packs bits across frames); two thirds of that for
    YBR_FULL_422 (chroma subsampled)."""
    total_bits = rows * columns * samples * bits * max(frames, 1)
    if str(photometric).strip() == "YBR_FULL_422":
        # Native YBR_FULL_422 stores two chroma samples per two pixels (PS3.3 C.7.6.3.1.2):
        # 2 samples per pixel on average instead of 3.
        total_bits = total_bits * 2 // 3
    return (total_bits + 7) // 8
