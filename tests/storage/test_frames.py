"""Frame spans computed at ingest, checked against pydicom's own frame access."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from storage.frames import PixelDataTruncated, encapsulated_spans, read_encapsulated_items
from storage.ingest import analyze
from storage.model import FrameSpan


def _analyze(name: str):  # type: ignore[no-untyped-def]
    return analyze(
        Path(get_testdata_file(name)),
        bulkdata_threshold=1024,
        bulkdata_base="arca-base:",
    )


def _frame_bytes(data: bytes, span: FrameSpan) -> bytes:
    return b"".join(data[offset : offset + length] for offset, length in span.fragments)


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("emri_small.dcm", 10),
        ("SC_rgb_2frame.dcm", 2),
        ("CT_small.dcm", 1),
        ("liver.dcm", 3),  # 1-bit segmentation: frames share bytes, no spans
    ],
)
def test_native_spans_match_pydicom(name: str, frames: int) -> None:
    analysis = _analyze(name)
    data = Path(get_testdata_file(name)).read_bytes()
    ds = dcmread(get_testdata_file(name))
    assert analysis.number_of_frames == frames
    if ds.BitsAllocated == 1:
        assert analysis.frames is None
        return
    assert analysis.frames is not None and len(analysis.frames) == frames
    frame_size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    for i, span in enumerate(analysis.frames):
        assert _frame_bytes(data, span) == ds.PixelData[i * frame_size : (i + 1) * frame_size]


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("emri_small_RLE.dcm", 10),
        ("emri_small_jpeg_2k_lossless.dcm", 10),
        ("emri_small_jpeg_ls_lossless.dcm", 10),
        ("SC_rgb_rle_2frame.dcm", 2),
        ("color3d_jpeg_baseline.dcm", 120),
        ("JPEG2000.dcm", 1),
        ("SC_rgb_jpeg_dcmtk.dcm", 1),
        ("693_J2KR.dcm", 1),
    ],
)
def test_encapsulated_spans_match_pydicom(name: str, frames: int) -> None:
    analysis = _analyze(name)
    data = Path(get_testdata_file(name)).read_bytes()
    ds = dcmread(get_testdata_file(name))
    expected = list(generate_frames(ds.PixelData, number_of_frames=frames))
    assert analysis.frames is not None
    assert [_frame_bytes(data, span) for span in analysis.frames] == expected


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "image_dfl.dcm"])
def test_no_spans_where_offsets_are_unusable(name: str) -> None:
    analysis = _analyze(name)
    assert analysis.frames is None
    assert analysis.number_of_frames == 1


def test_no_pixel_data_no_frames() -> None:
    analysis = _analyze("rtstruct.dcm")
    assert analysis.number_of_frames == 0
    assert analysis.frames == ()


def _items(fragments: list[bytes], bot: bytes = b"") -> bytes:
    out = struct.pack("<HHI", 0xFFFE, 0xE000, len(bot)) + bot
    for fragment in fragments:
        out += struct.pack("<HHI", 0xFFFE, 0xE000, len(fragment)) + fragment
    return out + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def test_basic_offset_table_groups_fragments() -> None:
    fragments = [b"aa", b"bbbb", b"cc", b"dddddd"]
    # Frame 0 = fragments 0+1, frame 1 = fragments 2+3; offsets from the first fragment item.
    bot = struct.pack("<2I", 0, (8 + 2) + (8 + 4))
    bot_bytes, found = read_encapsulated_items(io.BytesIO(_items(fragments, bot)), 0)
    spans = encapsulated_spans(bot_bytes, found, 2)
    data = _items(fragments, bot)
    assert spans is not None
    assert [_frame_bytes(data, s) for s in spans] == [b"aabbbb", b"ccdddddd"]


def test_ambiguous_fragments_give_no_spans() -> None:
    fragments = [b"aa", b"bb", b"cc"]
    bot_bytes, found = read_encapsulated_items(io.BytesIO(_items(fragments)), 0)
    assert encapsulated_spans(bot_bytes, found, 2) is None  # 3 fragments, 2 frames, no BOT
    assert encapsulated_spans(bot_bytes, found, 3) is not None
    assert encapsulated_spans(bot_bytes, found, 1) is not None


def test_extended_offset_table() -> None:
    fragments = [b"aa", b"bbbb"]
    data = _items(fragments)
    bot_bytes, found = read_encapsulated_items(io.BytesIO(data), 0)
    spans = encapsulated_spans(bot_bytes, found, 2, extended_offsets=[0, 8 + 2])
    assert spans is not None
    assert [_frame_bytes(data, s) for s in spans] == [b"aa", b"bbbb"]
    assert encapsulated_spans(bot_bytes, found, 2, extended_offsets=[0, 3]) is None


def test_missing_delimiter_is_truncation() -> None:
    data = _items([b"aa", b"bb"])[:-8]
    with pytest.raises(PixelDataTruncated, match="Delimitation"):
        read_encapsulated_items(io.BytesIO(data), 0)
    data = _items([b"aa", b"bbbbbbbb"])[:-12]
    with pytest.raises(PixelDataTruncated):
        read_encapsulated_items(io.BytesIO(data), 0)


def test_native_ybr_full_422_is_two_thirds() -> None:
    analysis = _analyze("SC_ybr_full_422_uncompressed.dcm")
    ds = dcmread(get_testdata_file("SC_ybr_full_422_uncompressed.dcm"))
    data = Path(get_testdata_file("SC_ybr_full_422_uncompressed.dcm")).read_bytes()
    assert analysis.frames is not None
    assert [_frame_bytes(data, s) for s in analysis.frames] == [ds.PixelData]
