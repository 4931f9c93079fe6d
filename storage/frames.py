"""Where each frame's bytes sit inside a stored blob (computed once, at ingest).

Native Pixel Data (PS3.5 §8.1.1): frame *i* starts at the value's offset + i × frame size;
usable only for little-endian, non-deflated syntaxes (the stored bytes are what a client gets).

Encapsulated Pixel Data (PS3.5 §A.4): items follow the value's start: the Basic Offset Table
item, then fragment items, then the Sequence Delimitation Item. Fragments map to frames by,
in order: the Extended Offset Table (7FE0,0001) when present; one fragment per frame when the
counts agree; all fragments for a single frame; the Basic Offset Table when it is not empty.
Otherwise the mapping is ambiguous and the spans are None (frames are then read through
pydicom).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from storage.model import FrameSpan

ITEM = 0xFFFE_E000
SEQUENCE_DELIMITER = 0xFFFE_E0DD
UNDEFINED_LENGTH = 0xFFFF_FFFF


class PixelDataTruncated(ValueError):
    """The Pixel Data value ends before the file says it should."""


def native_spans(
    value_offset: int, value_length: int, frame_size: int, number_of_frames: int
) -> tuple[FrameSpan, ...]:
    """Spans of native frames; raises PixelDataTruncated when the value is too short."""
    if value_length < frame_size * number_of_frames:
        raise PixelDataTruncated(
            f"Pixel Data holds {value_length} bytes, {number_of_frames} frame(s) of "
            f"{frame_size} bytes need {frame_size * number_of_frames}"
        )
    return tuple(
        FrameSpan(((value_offset + i * frame_size, frame_size),)) for i in range(number_of_frames)
    )


def read_encapsulated_items(fp: BinaryIO, value_offset: int) -> tuple[bytes, list[tuple[int, int]]]:
    """(Basic Offset Table bytes, [(fragment value offset, length), ...]) from a file.

    Raises PixelDataTruncated when the items run past the end of the file or the Sequence
    Delimitation Item is missing.
    """
    fp.seek(value_offset)
    header = fp.read(8)
    if len(header) < 8:
        raise PixelDataTruncated("encapsulated Pixel Data ends before its Basic Offset Table")
    tag_group, tag_elem, length = struct.unpack("<HHI", header)
    if (tag_group << 16 | tag_elem) != ITEM:
        raise PixelDataTruncated("encapsulated Pixel Data does not start with an item")
    bot = fp.read(length)
    if len(bot) < length:
        raise PixelDataTruncated("encapsulated Pixel Data ends inside its Basic Offset Table")
    fragments: list[tuple[int, int]] = []
    position = value_offset + 8 + length
    while True:
        header = fp.read(8)
        if len(header) < 8:
            raise PixelDataTruncated(
                "encapsulated Pixel Data has no Sequence Delimitation Item (file truncated)"
            )
        tag_group, tag_elem, length = struct.unpack("<HHI", header)
        tag = tag_group << 16 | tag_elem
        if tag == SEQUENCE_DELIMITER:
            return bot, fragments
        if tag != ITEM or length == UNDEFINED_LENGTH:
            raise PixelDataTruncated(f"unexpected tag {tag:08X} among Pixel Data fragments")
        fragments.append((position + 8, length))
        position += 8 + length
        fp.seek(position)
        if length and fp.tell() != position:
            raise PixelDataTruncated("a Pixel Data fragment runs past the end of the file")


def encapsulated_spans(
    bot: bytes,
    fragments: list[tuple[int, int]],
    number_of_frames: int,
    extended_offsets: list[int] | None = None,
) -> tuple[FrameSpan, ...] | None:
    """Group fragments into frames (see the module docstring for the order of rules)."""
    if not fragments or number_of_frames < 1:
        return None
    first_item = fragments[0][0] - 8
    if extended_offsets is not None:
        return _group_by_offsets(fragments, first_item, extended_offsets, number_of_frames)
    if len(fragments) == number_of_frames:
        return tuple(FrameSpan((fragment,)) for fragment in fragments)
    if number_of_frames == 1:
        return (FrameSpan(tuple(fragments)),)
    if bot and len(bot) % 4 == 0:
        offsets = list(struct.unpack(f"<{len(bot) // 4}I", bot))
        return _group_by_offsets(fragments, first_item, offsets, number_of_frames)
    return None


def _group_by_offsets(
    fragments: list[tuple[int, int]], first_item: int, offsets: list[int], number_of_frames: int
) -> tuple[FrameSpan, ...] | None:
    # Offsets count from the first byte of the first fragment's item tag (PS3.5 §A.4).
    if len(offsets) != number_of_frames or offsets != sorted(offsets) or offsets[0] != 0:
        return None
    starts = {offset: index for index, (offset, _) in enumerate(fragments)}
    indexes: list[int] = []
    for relative in offsets:
        index = starts.get(first_item + relative + 8)
        if index is None:
            return None
        indexes.append(index)
    bounds = [*indexes, len(fragments)]
    return tuple(
        FrameSpan(tuple(fragments[bounds[i] : bounds[i + 1]])) for i in range(number_of_frames)
    )


def spans_to_json(spans: tuple[FrameSpan, ...] | None) -> list[list[list[int]]] | None:
    if spans is None:
        return None
    return [[[offset, length] for offset, length in span.fragments] for span in spans]


def spans_from_json(data: list[list[list[int]]] | None) -> tuple[FrameSpan, ...] | None:
    if data is None:
        return None
    return tuple(FrameSpan(tuple((int(o), int(n)) for o, n in span)) for span in data)
