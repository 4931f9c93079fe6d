"""Transcode a whole instance: Part-10 in, Part-10 out in the target transfer syntax.

SOP Instance UID: kept, also for lossy targets. PS3.3 C.7.6.1.1.5 gives a lossy-compressed
*derived image* (Image Type DERIVED) a new SOP Instance UID. A rendition made in transit
because the receiver asked for that transfer syntax (an accepted presentation context over
DIMSE, PS3.5 §10; the Accept transfer-syntax of a WADO-RS request, PS3.18 §8.7.3) is the same
instance in another encoding: the client asked for *that* UID, and a new one would break every
reference to it. So the UID and Image Type stay, and the compression is recorded in Lossy
Image Compression, Ratio and Method (PS3.3 C.7.6.1.1.5.1/.2) for receivers to check.

Why not pydicom's ``Dataset.compress``: it generates a new SOP Instance UID by default, has no
JPEG baseline encoder, and works per data set, while frames() needs the same per-frame
encoders; so frames go through pydicom's per-frame encoders (backends/) and are encapsulated
here, one fragment per frame.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
from pydicom import Dataset, dcmwrite, uid
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.multival import MultiValue
from pydicom.pixels.utils import pack_bits

from conformance.transfer_syntaxes import TRANSFER_SYNTAXES
from transcoding.encode import encode_frame
from transcoding.errors import CorruptPixelData, NoCodec
from transcoding.frame_info import EncodedFrame, FrameInfo
from transcoding.pixels import iter_frames, source_syntax
from transcoding.registry import can_encode, encoder_for, is_native_target

_MAX_BOT_BYTES = 2**32 - 1
"""The Basic Offset Table holds 32-bit offsets (PS3.5 A.4); beyond that the Extended Offset
Table (7FE0,0001)/(7FE0,0002) is needed."""

# JPEG process 1/2/4 always discards information (DCT quantisation).
_ALWAYS_LOSSY_SOURCES = frozenset({uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit})


def transcode_instance(ds: Dataset, target: str) -> bytes:
    """``ds`` rewritten in ``target``; the caller has already handled source == target."""
    if target not in TRANSFER_SYNTAXES or not can_encode(target):
        encoder_for(target)  # raises NoCodec with the reason
    if "PixelData" not in ds:
        if "Rows" in ds and not any(k in ds for k in ("FloatPixelData", "DoubleFloatPixelData")):
            raise CorruptPixelData("the Image Pixel Module is present but Pixel Data is missing")
        if not is_native_target(target) and any(
            k in ds for k in ("FloatPixelData", "DoubleFloatPixelData")
        ):
            raise NoCodec("float pixel data has no encapsulated transfer syntax")
        return _write(ds, target)

    source_ts = source_syntax(ds)
    stored_pixel_bytes = len(ds.PixelData)
    # Frames are decoded one at a time and encoded at once: a large multi-frame object never
    # holds more than one decoded frame plus the output in the worker's memory.
    if is_native_target(target):
        info, count = _set_native_pixels(ds, iter_frames(ds))
        encoded_bytes = None
    else:
        fragments: list[bytes] = []
        first: tuple[FrameInfo, EncodedFrame] | None = None
        for arr, frame_info in iter_frames(ds):
            encoded = encode_frame(arr, frame_info, target)
            first = first or (frame_info, encoded)
            fragments.append(encoded.data)
        if first is None:
            raise CorruptPixelData("Pixel Data holds no frames")
        info, first_encoded = first
        count = len(fragments)
        encoded_bytes = sum(len(f) for f in fragments)
        _set_encapsulated_pixels(ds, fragments)
        _set_pixel_module(
            ds, info, first_encoded.photometric_interpretation, first_encoded.bits_stored
        )
    uncompressed = _uncompressed_size(info) * count

    if source_ts in _ALWAYS_LOSSY_SOURCES and ds.get("LossyImageCompression") != "01":
        # PS3.3 C.7.6.1.1.5: pixels that went through lossy JPEG stay marked lossy.
        ratio = uncompressed / max(stored_pixel_bytes, 1)
        _record_lossy(ds, TRANSFER_SYNTAXES[source_ts].lossy_method or "ISO_10918_1", ratio)
    ts = TRANSFER_SYNTAXES[target]
    if ts.lossy and encoded_bytes is not None:
        _record_lossy(ds, ts.lossy_method or target, uncompressed / max(encoded_bytes, 1))
    return _write(ds, target)


def _uncompressed_size(info: FrameInfo) -> int:
    bits = info.rows * info.columns * info.samples_per_pixel * info.bits_allocated
    return (bits + 7) // 8


def _set_pixel_module(
    ds: Dataset, info: FrameInfo, photometric: str, bits_stored: int | None = None
) -> None:
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = info.samples_per_pixel
    ds.BitsAllocated = info.bits_allocated
    ds.PixelRepresentation = info.pixel_representation
    if info.samples_per_pixel > 1:
        # Decoded frames are colour-by-pixel; every encapsulated syntax we write expects 0.
        ds.PlanarConfiguration = 0
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    if bits_stored is not None and bits_stored != info.bits_stored:
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1


def _set_native_pixels(
    ds: Dataset, frames: Iterator[tuple[np.ndarray[Any, Any], FrameInfo]]
) -> tuple[FrameInfo, int]:
    info: FrameInfo | None = None
    chunks: list[bytes] = []
    bit_frames: list[np.ndarray[Any, Any]] = []
    for arr, frame_info in frames:
        info = info or frame_info
        if frame_info.bits_allocated == 1:
            bit_frames.append(arr)  # 1-bit frames are packed together: not byte aligned
        else:
            chunks.append(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes())
    if info is None:
        raise CorruptPixelData("Pixel Data holds no frames")
    count = len(bit_frames) or len(chunks)
    data = bytes(pack_bits(np.stack(bit_frames), pad=False)) if bit_frames else b"".join(chunks)
    if len(data) % 2:
        data += b"\x00"  # PS3.5 7.1.1: values have even length
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    ds.PixelData = data
    ds["PixelData"].VR = "OW" if info.bits_allocated > 8 else "OB"
    ds["PixelData"].is_undefined_length = False
    _set_pixel_module(ds, info, info.photometric_interpretation)
    return info, count


def _set_encapsulated_pixels(ds: Dataset, fragments: list[bytes]) -> None:
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    # One fragment per frame (PS3.5 A.4), indexed by the Basic Offset Table unless the
    # offsets overflow 32 bits, then by the Extended Offset Table.
    if sum(len(f) + 8 for f in fragments) <= _MAX_BOT_BYTES:
        ds.PixelData = encapsulate(fragments, has_bot=True)
    else:
        data, offsets, lengths = encapsulate_extended(fragments)
        ds.PixelData = data
        ds.ExtendedOffsetTable = offsets
        ds.ExtendedOffsetTableLengths = lengths
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _record_lossy(ds: Dataset, method: str, ratio: float) -> None:
    """PS3.3 C.7.6.1.1.5: mark lossy and append this step's ratio and method to the history."""
    ds.LossyImageCompression = "01"
    ratios = [str(r) for r in _as_list(ds.get("LossyImageCompressionRatio"))]
    methods = [str(m) for m in _as_list(ds.get("LossyImageCompressionMethod"))]
    ratios.append(f"{ratio:.4g}")
    methods.append(method)
    ds.LossyImageCompressionRatio = ratios
    ds.LossyImageCompressionMethod = methods


def _write(ds: Dataset, target: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = uid.UID(target)
    if ds.original_encoding[1] is False:
        _forget_big_endian(ds)
    buf = io.BytesIO()
    dcmwrite(
        buf,
        ds,
        enforce_file_format=True,
        implicit_vr=target == uid.ImplicitVRLittleEndian,
        little_endian=True,
    )
    return buf.getvalue()


def _forget_big_endian(ds: Dataset) -> None:
    """Parse every raw element of a big-endian data set so it is re-encoded little endian."""
    for elem in ds.iterall():
        if elem.VR == "SQ":
            for item in elem.value:
                item.set_original_encoding(
                    item.original_encoding[0], True, item.original_character_set
                )
    ds.set_original_encoding(ds.original_encoding[0], True, ds.original_character_set)
