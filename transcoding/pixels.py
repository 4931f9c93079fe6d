"""Reading a Part-10 source and decoding its frames; bad input becomes CorruptPixelData."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread, uid
from pydicom.encaps import generate_fragments, parse_basic_offsets
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
_NATIVE = frozenset(
    {
        uid.ImplicitVRLittleEndian,
        uid.ExplicitVRLittleEndian,
        uid.DeflatedExplicitVRLittleEndian,
        uid.ExplicitVRBigEndian,
    }
)
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
    if "SOPClassUID" not in ds:
        # pydicom returns an empty data set for some truncated files instead of failing
        raise CorruptPixelData("the data set is empty or truncated (no SOP Class UID)")
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
    if ts in _NATIVE:
        check_native_length(ds, stored, count)
    else:
        check_encapsulated_frame_count(ds, count)
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
            if ts not in _NATIVE:
                _check_value_range(arr, stored, int(meta["pixel_representation"]))
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


def native_frame_length(info: FrameInfo) -> int:
    """Bytes of one native frame (PS3.5 8.1.1); YBR_FULL_422 shares Cb/Cr between 2 pixels."""
    samples = 2 if info.photometric_interpretation == "YBR_FULL_422" else info.samples_per_pixel
    return (info.rows * info.columns * samples * info.bits_allocated + 7) // 8


def check_native_length(ds: Dataset, info: FrameInfo, count: int) -> None:
    """Native Pixel Data long enough for more frames than Number of Frames says is a lie too
    (pydicom would silently drop the extra frames)."""
    frame = native_frame_length(info)
    available = len(ds.PixelData)
    if info.bits_allocated % 8 == 0 and available >= frame * (count + 1):
        raise CorruptPixelData(
            f"Pixel Data holds {available // frame} frames of {frame} bytes, "
            f"Number of Frames is {count}"
        )


def check_encapsulated_frame_count(ds: Dataset, count: int) -> None:
    """Number of Frames against what the encapsulated Pixel Data holds (PS3.5 A.4)."""
    data = ds.PixelData
    try:
        bot = parse_basic_offsets(data)
        indexed = len(ds.ExtendedOffsetTable) // 8 if "ExtendedOffsetTable" in ds else len(bot)
        if indexed:
            if indexed != count:
                raise CorruptPixelData(
                    f"the offset table indexes {indexed} frames, Number of Frames is {count}"
                )
            return
        # No offset table: the BOT item is 8 bytes of header plus its (empty) value.
        fragments = list(generate_fragments(data[8 + 4 * len(bot) :]))
    except TranscodingError:
        raise
    except Exception as exc:
        raise CorruptPixelData(f"encapsulated Pixel Data is malformed: {exc}") from None
    if len(fragments) < count:
        # PS3.5 A.4: every frame is at least one fragment
        raise CorruptPixelData(
            f"Pixel Data holds {len(fragments)} fragments, too few for {count} frames"
        )
    if len(fragments) > count and all(_ends_codestream(f) for f in fragments):
        # Each fragment is a complete JPEG / JPEG 2000 codestream (ends with EOI/EOC).
        raise CorruptPixelData(
            f"Pixel Data holds {len(fragments)} complete codestreams, Number of Frames is {count}"
        )


def _ends_codestream(fragment: bytes) -> bool:
    return fragment.rstrip(b"\x00")[-2:] == b"\xff\xd9"


def _check_value_range(
    arr: np.ndarray[Any, Any], stored: FrameInfo, pixel_representation: int
) -> None:
    """Decoded samples must fit Bits Stored (PS3.3 C.7.6.3.1): else the header lies."""
    if arr.dtype.kind not in "iu" or stored.bits_stored >= arr.dtype.itemsize * 8:
        return
    bits = stored.bits_stored
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if pixel_representation else (0, 2**bits - 1)
    a_min, a_max = int(arr.min()), int(arr.max())
    if a_min < lo or a_max > hi:
        raise CorruptPixelData(
            f"decoded samples span {a_min}..{a_max}, more than Bits Stored {bits} allows "
            f"({lo}..{hi})"
        )


def native_frame_bytes(arr: np.ndarray[Any, Any], info: FrameInfo) -> bytes:
    """One decoded frame laid out as native little-endian pixel data (PS3.5 8.1, A.1)."""
    from pydicom.pixels.utils import pack_bits

    if info.bits_allocated == 1:
        return bytes(pack_bits(arr, pad=False))
    dtype = arr.dtype.newbyteorder("<")
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()
