"""Frame access: native slices, stored fragments, decoded frames, re-encoded frames."""

from __future__ import annotations

import io

import numpy as np
import openjpeg
import pytest
from pydicom import uid
from pydicom.encaps import get_frame
from pydicom.pixels.utils import pack_bits

from tests.transcoding.samples import read, sample_file
from transcoding.errors import FrameNotFound, NoCodec
from transcoding.pool import Transcoder


async def test_native_frames_are_slices_of_the_stored_pixels(transcoder: Transcoder) -> None:
    source = sample_file("emri_small.dcm")  # 10 frames, 64x64x16, native
    ds = read(source)
    frames = await transcoder.frames(source, [3, 7], None)
    length = 64 * 64 * 2
    assert frames == [ds.PixelData[2 * length : 3 * length], ds.PixelData[6 * length : 7 * length]]


async def test_stored_syntax_returns_the_fragments_untouched(transcoder: Transcoder) -> None:
    source = sample_file("emri_small_jpeg_2k_lossless.dcm")
    ds = read(source)
    frames = await transcoder.frames(source, [1, 10], uid.JPEG2000Lossless)
    assert frames == [get_frame(ds.PixelData, i, number_of_frames=10) for i in (0, 9)]


async def test_encapsulated_frames_decompressed_to_native(transcoder: Transcoder) -> None:
    source = sample_file("emri_small_jpeg_2k_lossless.dcm")
    expected = read(source).pixel_array
    frames = await transcoder.frames(source, [2, 5], None)
    assert frames[0] == expected[1].astype("<u2").tobytes()
    assert frames[1] == expected[4].astype("<u2").tobytes()


async def test_big_endian_frames_come_out_little_endian(transcoder: Transcoder) -> None:
    source = sample_file("emri_small_big_endian.dcm")
    expected = read(sample_file("emri_small.dcm")).pixel_array
    (frame,) = await transcoder.frames(source, [4], None)
    assert frame == expected[3].astype("<u2").tobytes()


async def test_frames_reencoded_in_another_syntax(transcoder: Transcoder) -> None:
    source = sample_file("SC_rgb_rle_2frame.dcm")
    expected = read(source).pixel_array
    frames = await transcoder.frames(source, [2], uid.JPEG2000Lossless)
    # a bare J2K codestream (SOC marker), not a Part-10 file
    assert frames[0][:2] == b"\xff\x4f"
    np.testing.assert_array_equal(openjpeg.decode(io.BytesIO(frames[0])), expected[1])


async def test_one_bit_frames_are_packed_per_frame(transcoder: Transcoder) -> None:
    source = sample_file("liver.dcm")  # 3 frames of 1-bit segmentation
    expected = read(source).pixel_array
    (frame,) = await transcoder.frames(source, [2], None)
    assert frame == pack_bits(expected[1], pad=False)


async def test_frame_out_of_range(transcoder: Transcoder) -> None:
    with pytest.raises(FrameNotFound, match=r"\[11\]"):
        await transcoder.frames(sample_file("emri_small.dcm"), [1, 11], None)
    with pytest.raises(FrameNotFound):
        await transcoder.frames(sample_file("CT_small.dcm"), [0], None)


async def test_frames_in_a_syntax_nobody_encodes(transcoder: Transcoder) -> None:
    with pytest.raises(NoCodec, match="HTJ2K"):
        await transcoder.frames(sample_file("CT_small.dcm"), [1], uid.HTJ2KLossless)
    with pytest.raises(NoCodec, match="8-bit"):
        await transcoder.frames(sample_file("CT_small.dcm"), [1], uid.JPEGBaseline8Bit)
