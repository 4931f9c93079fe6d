"""Frame access: per-frame bitstreams in a transfer syntax, or native pixels (PS3.18 §8.7.3.5)."""

from __future__ import annotations

from pydicom import Dataset, uid
from pydicom.encaps import get_frame

from transcoding.encode import encode_frame
from transcoding.errors import CorruptPixelData
from transcoding.pixels import (
    check_frame_numbers,
    check_native_length,
    image_info,
    iter_frames,
    native_frame_bytes,
    native_frame_length,
    number_of_frames,
    source_syntax,
)
from transcoding.registry import encoder_for, is_native, is_native_target


def extract_frames(ds: Dataset, frame_numbers: list[int], target: str | None) -> list[bytes]:
    """Frames (1-based) in ``target``; None (or a native syntax) = native little-endian bytes."""
    check_frame_numbers(ds, frame_numbers)
    if "PixelData" not in ds:
        raise CorruptPixelData("the instance has no Pixel Data (7FE0,0010)")
    source_ts = source_syntax(ds)
    if target is None or is_native_target(target):
        if _raw_slices_ok(ds):
            return _native_slices(ds, frame_numbers)
        indices = [n - 1 for n in frame_numbers]
        return [native_frame_bytes(arr, info) for arr, info in iter_frames(ds, indices)]
    if target == source_ts:
        return _stored_fragments(ds, frame_numbers)
    encoder_for(target)  # NoCodec before any decoding work
    indices = [n - 1 for n in frame_numbers]
    return [encode_frame(arr, info, target).data for arr, info in iter_frames(ds, indices)]


def _raw_slices_ok(ds: Dataset) -> bool:
    """Native little-endian, byte-aligned frames can be cut from Pixel Data as stored."""
    ts = source_syntax(ds)
    return is_native(ts) and ts != uid.ExplicitVRBigEndian and int(ds.BitsAllocated) % 8 == 0


def _native_slices(ds: Dataset, frame_numbers: list[int]) -> list[bytes]:
    info = image_info(ds)
    length = native_frame_length(info)
    check_native_length(ds, info, number_of_frames(ds))
    data = ds.PixelData
    needed = length * number_of_frames(ds)
    if len(data) < needed:
        raise CorruptPixelData(
            f"Pixel Data holds {len(data)} bytes, the header needs {needed} "
            f"({number_of_frames(ds)} frames of {length})"
        )
    return [bytes(data[(n - 1) * length : n * length]) for n in frame_numbers]


def _stored_fragments(ds: Dataset, frame_numbers: list[int]) -> list[bytes]:
    count = number_of_frames(ds)
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        return [
            bytes(get_frame(ds.PixelData, n - 1, number_of_frames=count, extended_offsets=offsets))
            for n in frame_numbers
        ]
    except Exception as exc:
        raise CorruptPixelData(
            f"encapsulated Pixel Data does not split into frames: {exc}"
        ) from None
