"""Bad input becomes CorruptPixelData with a clear reason, and the pool keeps serving."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom import uid
from pydicom.encaps import encapsulate, get_frame

from tests.transcoding.samples import read, sample_file
from transcoding.errors import CorruptPixelData
from transcoding.pool import Transcoder
from transcoding.service import RenderParams


def _edited(name: str, edit: Callable[[pydicom.Dataset], None]) -> bytes:
    ds = read(sample_file(name))
    edit(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _j2k_fragment() -> bytes:
    ds = read(sample_file("693_J2KR.dcm"))
    return bytes(get_frame(ds.PixelData, 0, number_of_frames=1))


def _with_fragment(fragment: bytes) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        ds.PixelData = encapsulate([fragment])

    return edit


def _set(**attrs: object) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        for k, v in attrs.items():
            setattr(ds, k, v)

    return edit


CASES: list[tuple[str, Callable[[], bytes], str]] = [
    (
        "truncated J2K codestream",
        lambda: _edited("693_J2KR.dcm", _with_fragment(_j2k_fragment()[:20000])),
        "does not decode",
    ),
    (
        "J2K header overwritten",
        lambda: _edited(
            "693_J2KR.dcm", _with_fragment(b"\xff\x4f" + b"\x00" * 62 + _j2k_fragment()[64:])
        ),
        "does not decode",
    ),
    (
        "not a codestream at all",
        lambda: _edited("693_J2KR.dcm", _with_fragment(b"\x00" * 1000)),
        "does not decode",
    ),
    (
        "Rows disagrees with the codestream",
        lambda: _edited("693_J2KR.dcm", _set(Rows=256)),
        "does not decode",
    ),
    (
        "Bits Stored smaller than the decoded samples",
        lambda: _edited("693_J2KR.dcm", _set(BitsStored=8, HighBit=7)),
        "Bits Stored 8",
    ),
    (
        "Bits Stored greater than Bits Allocated",
        lambda: _edited("CT_small.dcm", _set(BitsStored=20)),
        "Bits Stored 20",
    ),
    ("native pixel data too short", lambda: sample_file("MR_truncated.dcm").read_bytes(), "less"),
    (
        "Number of Frames larger than the native data",
        lambda: _edited("emri_small.dcm", _set(NumberOfFrames=20)),
        "less",
    ),
    (
        "Number of Frames smaller than the native data",
        lambda: _edited("emri_small.dcm", _set(NumberOfFrames=5)),
        "Number of Frames is 5",
    ),
    (
        "Number of Frames larger than the fragments",
        lambda: _edited("emri_small_jpeg_2k_lossless.dcm", _set(NumberOfFrames=12)),
        "frames",
    ),
    (
        "Number of Frames smaller than the fragments",
        lambda: _edited("emri_small_jpeg_2k_lossless.dcm", _set(NumberOfFrames=5)),
        "10 complete codestreams",
    ),
    (
        "Photometric Interpretation needs 3 samples",
        lambda: _edited("CT_small.dcm", _set(PhotometricInterpretation="YBR_PARTIAL_420")),
        "Samples per Pixel",
    ),
    (
        "unknown Photometric Interpretation",
        lambda: _edited("CT_small.dcm", _set(PhotometricInterpretation="FOO")),
        "'FOO'",
    ),
    (
        "colour data labelled MONOCHROME2",
        lambda: _edited("SC_rgb.dcm", _set(PhotometricInterpretation="MONOCHROME2")),
        "Samples per Pixel",
    ),
    (
        "truncated file (empty data set)",
        lambda: sample_file("emri_small_jpeg_2k_lossless_too_short.dcm").read_bytes(),
        "empty or truncated",
    ),
    ("not DICOM", lambda: b"GIF89a" + b"\x00" * 500, "not a readable DICOM"),
    (
        "12-bit JPEG no installed decoder reads",
        lambda: sample_file("JPEG-lossy.dcm").read_bytes(),
        "does not decode",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason"), [(m, r) for _, m, r in CASES], ids=[c[0] for c in CASES]
)
async def test_bad_input_is_corrupt_pixel_data(
    make: Callable[[], bytes], reason: str, transcoder: Transcoder
) -> None:
    data = make()
    rebuilds = transcoder.stats.pool_rebuilds
    with pytest.raises(CorruptPixelData, match=reason):
        await transcoder.transcode(data, uid.JPEGLSLossless)
    with pytest.raises(CorruptPixelData):
        await transcoder.render(data, None, RenderParams())
    # nothing crashed: same pool, and it still answers
    assert transcoder.stats.pool_rebuilds == rebuilds
    assert await transcoder.frames(sample_file("CT_small.dcm"), [1], None)


async def test_bad_frames_request_is_corrupt_pixel_data(transcoder: Transcoder) -> None:
    data = _edited("emri_small.dcm", _set(NumberOfFrames=20))
    with pytest.raises(CorruptPixelData, match="Pixel Data holds 81920 bytes"):
        await transcoder.frames(data, [1], None)


async def test_missing_file(transcoder: Transcoder, tmp_path: Path) -> None:
    with pytest.raises(CorruptPixelData, match="not a readable DICOM"):
        await transcoder.transcode(tmp_path / "gone.dcm", uid.RLELossless)
