"""Value objects that cross the storage boundary (ingest results, retrieve plans)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from conformance.statuses import StowFailure, StowWarning


class IngestStatus(enum.Enum):
    STORED = "stored"
    """A new instance (or, with overwrite policy REPLACE, a replacement) is now durable."""
    ALREADY_PRESENT = "already_present"
    """Byte-identical to the stored instance; nothing new was written."""


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one instance that was stored (rejections raise IngestRejected)."""

    status: IngestStatus
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    sha256: str
    warnings: tuple[tuple[StowWarning, str], ...] = ()
    """Coercions made (WarningReason and a human-readable note)."""


@dataclass(frozen=True)
class IngestFailure:
    """A per-object failure, for callers that collect outcomes (STOW, arca import)."""

    failure: StowFailure
    message: str
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None


class Tier(enum.Enum):
    HOT = "hot"
    COLD = "cold"


@dataclass(frozen=True)
class FrameSpan:
    """Where one frame's bytes sit inside the stored blob (byte offsets into the file).

    Native pixel data: one fragment, the frame's bytes in the stored (little endian) layout.
    Encapsulated pixel data: the frame's fragments, in order, without their item headers;
    concatenated they form the frame's compressed bitstream.
    """

    fragments: tuple[tuple[int, int], ...]
    """(offset, length) pairs."""


@dataclass(frozen=True)
class InstanceLocation:
    """The retrieve plan of one instance: where its bytes are and how they are encoded."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    tier: Tier
    size: int
    sha256: str
    number_of_frames: int = 0
    """0 when the object has no pixel data."""
    frames: tuple[FrameSpan, ...] | None = None
    """Frame spans indexed at ingest; None when offsets are unusable (deflate, big endian,
    encapsulated with ambiguous fragment/frame mapping): read through pydicom instead."""
    pixel_attributes: dict[str, int | str] = field(default_factory=dict)
    """Rows, Columns, BitsAllocated, BitsStored, PixelRepresentation, SamplesPerPixel,
    PhotometricInterpretation, PlanarConfiguration: what frame access/transcoding needs."""
