"""Every reference source x target: syntax, photometric, pixels, lossy attributes, dciodvfy."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import uid

from tests.transcoding.reference import CASES, LOSSY_METHOD, LOSSY_TARGETS, MIN_PSNR, NO_CODEC, Case
from tests.transcoding.samples import dciodvfy_errors, read, sample_file
from transcoding.errors import NoCodec
from transcoding.pool import Transcoder

_source_errors: dict[str, set[str]] = {}


def _decoded(data: bytes | Path) -> np.ndarray:
    ds = read(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    mse = float(np.mean((ref - test.astype(np.float64)) ** 2))
    if mse == 0:
        return float("inf")
    peak = max(float(ref.max() - ref.min()), 1.0)
    return 10 * np.log10(peak**2 / mse)


def _baseline_errors(source: Path, tmp_path: Path) -> set[str]:
    """dciodvfy's errors for the source; dciodvfy cannot read deflate, so a deflated source
    is judged by its plain Explicit VR Little Endian re-encoding (same attributes)."""
    ds = read(source)
    if ds.file_meta.TransferSyntaxUID != uid.DeflatedExplicitVRLittleEndian:
        return dciodvfy_errors(source)
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    plain = tmp_path / "source-plain.dcm"
    ds.save_as(plain, enforce_file_format=True)
    return dciodvfy_errors(plain)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_reference_transcode(case: Case, transcoder: Transcoder, tmp_path: Path) -> None:
    source = sample_file(case.source)
    source_ds = read(source)
    if source_ds.file_meta.TransferSyntaxUID == case.target:
        out = await transcoder.transcode(source, case.target)
        assert out == source.read_bytes()  # already in that syntax: the stored bytes, untouched
        return
    if case.expected_photometric == NO_CODEC:
        with pytest.raises(NoCodec):
            await transcoder.transcode(source, case.target)
        return

    out = await transcoder.transcode(source.read_bytes(), case.target)
    ds = read(out)
    assert ds.file_meta.TransferSyntaxUID == case.target
    assert ds.PhotometricInterpretation == case.expected_photometric
    assert ds.SOPInstanceUID == source_ds.SOPInstanceUID  # same instance, other encoding
    assert ds.file_meta.MediaStorageSOPInstanceUID == source_ds.SOPInstanceUID
    assert int(ds.get("NumberOfFrames", 1)) == int(source_ds.get("NumberOfFrames", 1))

    expected = _decoded(source)
    actual = _decoded(out)
    assert actual.shape == expected.shape
    if case.target in LOSSY_TARGETS:
        assert psnr(expected, actual) >= MIN_PSNR[case.target], psnr(expected, actual)
        assert ds.LossyImageCompression == "01"
        methods = ds.LossyImageCompressionMethod
        methods = [methods] if isinstance(methods, str) else list(methods)
        ratios = ds.LossyImageCompressionRatio
        ratios = [ratios] if not hasattr(ratios, "__len__") else list(ratios)
        assert methods[-1] == LOSSY_METHOD[case.target]
        assert float(ratios[-1]) > 1.0
        if "LossyImageCompressionMethod" not in source_ds:
            assert len(methods) == 1
        if case.target == uid.JPEGLSNearLossless and case.expected_photometric.startswith("MONO"):
            diff = np.abs(expected.astype(np.int64) - actual.astype(np.int64))
            assert int(diff.max()) <= 2  # NEAR = 2
    else:
        np.testing.assert_array_equal(actual, expected)
        if (
            source_ds.get("LossyImageCompression") != "01"
            and case.source != "SC_rgb_jpeg_dcmtk.dcm"
        ):
            assert ds.get("LossyImageCompression") in (None, "00")

    # dicom3tools: the transcoded object adds no Error the source did not already have.
    if case.source not in _source_errors:
        _source_errors[case.source] = _baseline_errors(source, tmp_path)
    out_path = tmp_path / "out.dcm"
    out_path.write_bytes(out)
    new_errors = dciodvfy_errors(out_path) - _source_errors[case.source]
    assert not new_errors, new_errors
