"""Value objects describing one frame's pixel layout and one encoded frame."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FrameInfo:
    """The Image Pixel Module attributes (PS3.3 C.7.6.3) of one decoded frame."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str


@dataclass(frozen=True)
class EncodedFrame:
    """One frame's bitstream and the photometric interpretation the bitstream now has."""

    data: bytes
    photometric_interpretation: str
    bits_stored: int | None = None
    """Set when the encoder changed Bits Stored (e.g. JPEG baseline is always 8)."""
