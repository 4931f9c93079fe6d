"""Reading a Part-10 source and decoding its frames; bad input becomes CorruptPixelData."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread, uid
from pydicom.pixels.decoders.base import get_decoder

from transcoding.errors import CorruptPixelData, FrameNotFound, TranscodingError
from transcoding.frame_info import FrameInfo
from transcoding.registry import decoder_for

# PS3.3 C.7.6.3.1.2: the photometric interpretations, with their Samples per Pixel.
SAMPLES_FOR_PHOTOMETRIC = {
    "MONOCHROME1": 1,
    "MONOCHROME2": 1,
    "PALETTE COLOR": 1,
    "RGB": 3,
    "YBR_FULL": 3,
    "YBR_FULL_422": 3,
    "YBR_PARTIAL_420": 3,
    "YBR_ICT": 3,
    "YBR_RCT": 3,
}

# ISO 10918-1 codestreams: the YCbCr -> RGB transform is part of decoding the JPEG (PS3.5 8.2.1),
# so frames from these syntaxes are decoded straight to RGB; every other syntax is decoded
# without colour conversion, which keeps YBR_FULL data bit-exact.
_JPEG_10918 = frozenset(
    {uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1}
)


def read_source(source: bytes | Path | str) -> Dataset:
    """The data set of a Part-10 file given as bytes or a path."""
    try:
        ds = dcmread(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
    except TranscodingError:
        raise
    except Exception as exc:
        raise CorruptPixelData(f"not a readable DICOM Part-10 file: {exc}") from None
    if "TransferSyntaxUID" not in ds.file_meta:
        raise CorruptPixelData("the file meta information has no Transfer Syntax UID")
    return ds


def source_syntax(ds: Dataset) -> str:
    return str(ds.file_meta.TransferSyntaxUID)


def number_of_frames(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames", 1)
    try:
        count = int(value) if value not in (None, "") else 1
    except (TypeError, ValueError):
        raise CorruptPixelData(f"Number of Frames {value!r} is not an integer") from None
    if count < 1:
        raise CorruptPixelData(f"Number of Frames is {count}")
    return count


def image_info(ds: Dataset) -> FrameInfo:
    """The Image Pixel Module as stored, checked for self-consistency (PS3.3 C.7.6.3)."""
    try:
        info = FrameInfo(
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            samples_per_pixel=int(ds.get("SamplesPerPixel", 1)),
            bits_allocated=int(ds.BitsAllocated),
            bits_stored=int(ds.BitsStored),
            pixel_representation=int(ds.get("PixelRepresentation", 0)),
            photometric_interpretation=str(ds.PhotometricInterpretation).strip(),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise CorruptPixelData(f"the Image Pixel Module is incomplete: {exc}") from None
    pi = info.photometric_interpretation
    if pi not in SAMPLES_FOR_PHOTOMETRIC:
        raise CorruptPixelData(f"unknown Photometric Interpretation {pi!r}")
    if SAMPLES_FOR_PHOTOMETRIC[pi] != info.samples_per_pixel:
        raise CorruptPixelData(
            f"Photometric Interpretation {pi} needs Samples per Pixel "
            f"{SAMPLES_FOR_PHOTOMETRIC[pi]}, the header says {info.samples_per_pixel}"
        )
    if info.rows < 1 or info.columns < 1:
        raise CorruptPixelData(f"image size {info.columns}x{info.rows} is empty")
    if info.bits_allocated not in (1, 8, 16, 32, 64) or not (
        1 <= info.bits_stored <= info.bits_allocated
    ):
        raise CorruptPixelData(
            f"Bits Stored {info.bits_stored} does not fit Bits Allocated {info.bits_allocated}"
        )
    return info


def check_frame_numbers(ds: Dataset, frame_numbers: list[int]) -> None:
    count = number_of_frames(ds)
    bad = [n for n in frame_numbers if not 1 <= n <= count]
    if bad:
        raise FrameNotFound(f"frame(s) {bad} not in 1..{count}")


def decodes_to_rgb(ds: Dataset) -> bool:
    return source_syntax(ds) in _JPEG_10918 and str(ds.PhotometricInterpretation).startswith("YBR")


def iter_frames(
    ds: Dataset, indices: list[int] | None = None
) -> Iterator[tuple[np.ndarray[Any, Any], FrameInfo]]:
    """Decoded frames (0-based ``indices``; all when None) with their decoded pixel layout."""
    ts = source_syntax(ds)
    decoder_for(ts)  # NoCodec when nothing installed reads this syntax
    stored = image_info(ds)
    count = number_of_frames(ds)
    if "PixelData" not in ds:
        raise CorruptPixelData("the instance has no Pixel Data (7FE0,0010)")
    wanted = list(range(count)) if indices is None else indices
    try:
        frames = get_decoder(uid.UID(ts)).iter_array(
            ds, indices=wanted, as_rgb=decodes_to_rgb(ds), decoding_plugin=""
        )
        for arr, meta in frames:
            if arr.shape[:2] != (stored.rows, stored.columns):
                raise CorruptPixelData(
                    f"a frame decoded to {arr.shape[1]}x{arr.shape[0]}, the header says "
                    f"{stored.columns}x{stored.rows}"
                )
            info = FrameInfo(
                rows=stored.rows,
                columns=stored.columns,
                samples_per_pixel=int(meta["samples_per_pixel"]),
                bits_allocated=int(meta["bits_allocated"]),
                bits_stored=int(meta["bits_stored"]),
                pixel_representation=int(meta["pixel_representation"]),
                photometric_interpretation=str(meta["photometric_interpretation"]),
            )
            yield arr, info
    except TranscodingError:
        raise
    except Exception as exc:
        raise CorruptPixelData(
            f"pixel data does not decode as its header describes: {exc}"
        ) from None


def native_frame_bytes(arr: np.ndarray[Any, Any], info: FrameInfo) -> bytes:
    """One decoded frame laid out as native little-endian pixel data (PS3.5 8.1, A.1)."""
    from pydicom.pixels.utils import pack_bits

    if info.bits_allocated == 1:
        return bytes(pack_bits(arr, pad=False))
    dtype = arr.dtype.newbyteorder("<")
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()
