"""The spliced fast path writes exactly what the general path writes, or stands aside."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import uid

from tests.data import ct_dataset
from tests.transcoding.samples import read, sample_file
from transcoding.instance import transcode_instance
from transcoding.pixels import read_source
from transcoding.splice import splice_transcode

LOSSLESS = (uid.JPEG2000Lossless, uid.JPEGLSLossless, uid.RLELossless)


@pytest.mark.parametrize("target", LOSSLESS)
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm"])
def test_spliced_output_is_byte_identical_to_the_general_path(name: str, target: str) -> None:
    data = sample_file(name).read_bytes()
    spliced = splice_transcode(data, target)
    assert spliced is not None
    assert spliced == transcode_instance(read_source(data), target)
    np.testing.assert_array_equal(read(spliced).pixel_array, read(data).pixel_array)


def test_a_generated_ct_slice_is_spliced(tmp_path: Path) -> None:
    ds = ct_dataset(3, study_uid=uid.generate_uid(), series_uid=uid.generate_uid())
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    spliced = splice_transcode(data, uid.JPEG2000Lossless)
    assert spliced == transcode_instance(read_source(data), uid.JPEG2000Lossless)


@pytest.mark.parametrize(
    ("name", "target", "why"),
    [
        ("SC_rgb.dcm", uid.JPEG2000Lossless, "colour"),
        ("MR_small_bigendian.dcm", uid.JPEG2000Lossless, "big endian source"),
        ("JPEG2000.dcm", uid.JPEGLSLossless, "encapsulated source"),
        ("693_UNCI.dcm", uid.JPEG2000Lossless, "group length elements"),
        ("CT_small.dcm", uid.JPEG2000, "lossy target (lossy history is recorded)"),
        ("CT_small.dcm", uid.ExplicitVRLittleEndian, "native target"),
    ],
)
def test_other_cases_are_left_to_the_general_path(name: str, target: str, why: str) -> None:
    assert splice_transcode(sample_file(name).read_bytes(), target) is None, why


def test_values_outside_bits_stored_are_left_to_the_general_path() -> None:
    ds = read(sample_file("CT_small.dcm"))  # 16 bits stored in 16: make it claim 12
    ds.BitsStored, ds.HighBit = 12, 11
    pixels = ds.pixel_array.copy()
    pixels[0, 0] = 4000  # > 2047: outside a signed 12-bit range
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert splice_transcode(buf.getvalue(), uid.JPEG2000Lossless) is None


def test_file_meta_without_media_storage_uids_is_left_to_the_general_path() -> None:
    """Ingest accepts a file meta group that lacks (0002,0002)/(0002,0003); the general
    path rebuilds it, so the splice must not fail the job on it."""
    ds = read(sample_file("CT_small.dcm"))
    del ds.file_meta.MediaStorageSOPClassUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    data = buf.getvalue()
    assert data[128:132] == b"DICM"
    assert splice_transcode(data, uid.JPEG2000Lossless) is None
    out = read(transcode_instance(read_source(data), uid.JPEG2000Lossless))
    np.testing.assert_array_equal(out.pixel_array, ds.pixel_array)
