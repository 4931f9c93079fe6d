"""Whole-instance details the reference table does not reach: offset tables, lossy history."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import uid

from tests.transcoding.samples import read, sample_file
from transcoding import instance
from transcoding.pixels import read_source
from transcoding.pool import Transcoder


def test_extended_offset_table_when_offsets_overflow_32_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Real >4 GiB objects are too big for a test: lower the Basic Offset Table limit instead.
    monkeypatch.setattr(instance, "_MAX_BOT_BYTES", 1000)
    source = sample_file("emri_small.dcm")
    out = read(instance.transcode_instance(read_source(source), uid.JPEG2000Lossless))
    assert len(out.ExtendedOffsetTable) == 10 * 8
    assert len(out.ExtendedOffsetTableLengths) == 10 * 8
    np.testing.assert_array_equal(out.pixel_array, read(source).pixel_array)


def test_basic_offset_table_indexes_every_frame() -> None:
    from pydicom.encaps import parse_basic_offsets

    source = sample_file("emri_small.dcm")
    out = read(instance.transcode_instance(read_source(source), uid.RLELossless))
    assert len(parse_basic_offsets(out.PixelData)) == 10
    assert "ExtendedOffsetTable" not in out


async def test_lossy_history_is_appended(transcoder: Transcoder) -> None:
    # PS3.3 C.7.6.1.1.5.2: one ratio and one method per lossy step, oldest first.
    source = sample_file("SC_rgb_jpeg_dcmtk.dcm")  # already JPEG baseline, method recorded
    before = read(source)
    assert before.LossyImageCompressionMethod == "ISO_10918_1"
    out = read(await transcoder.transcode(source, uid.JPEG2000))
    assert out.LossyImageCompression == "01"
    assert list(out.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_15444_1"]
    assert len(out.LossyImageCompressionRatio) == 2
    assert float(out.LossyImageCompressionRatio[0]) == float(before.LossyImageCompressionRatio)


async def test_decompressing_lossy_keeps_it_marked_lossy(transcoder: Transcoder) -> None:
    # PS3.3 C.7.6.1.1.5: once "01", never reset, even when stored uncompressed afterwards.
    ds = read(sample_file("SC_rgb_dcmtk_+eb+cy+np.dcm"))  # JPEG baseline YBR_FULL_422
    # as some writers leave it: lossy pixels, no record of it
    for keyword in (
        "LossyImageCompression",
        "LossyImageCompressionMethod",
        "LossyImageCompressionRatio",
    ):
        del ds[keyword]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out = read(await transcoder.transcode(buf.getvalue(), uid.ExplicitVRLittleEndian))
    assert out.LossyImageCompression == "01"
    assert out.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(out.LossyImageCompressionRatio) > 1
    assert out.PhotometricInterpretation == "RGB"


async def test_big_endian_source_to_little_endian(transcoder: Transcoder) -> None:
    source = sample_file("MR_small_bigendian.dcm")
    out = read(await transcoder.transcode(source, uid.ExplicitVRLittleEndian))
    assert out.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian
    expected = read(sample_file("MR_small.dcm"))
    np.testing.assert_array_equal(out.pixel_array, expected.pixel_array)
    assert out.PatientName == expected.PatientName
