"""The studies the viewer test loads into arca, each with the pixels a viewer should show.

Every study gets fresh UIDs and its own patient name, so the study list can be checked by text.
``expected`` is what OHIF should paint for an image of the study: the stored pixels with the
modality LUT and the object's own window applied (PS3.3 C.11.2), as 8-bit grey (luma for
colour), computed here with pydicom, independently of arca and of the browser.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import JPEGLSLossless, generate_uid

from tests.data import ct_dataset, testdata


@dataclass
class Study:
    """One study for the viewer: its Part-10 files and what the first image must look like."""

    key: str
    patient_name: str
    description: str
    study_uid: str
    files: list[bytes] = field(default_factory=list)
    expected: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    """8-bit grey image of each (SOPInstanceUID, frame number) a viewer may show first."""
    broken_sop_uids: list[str] = field(default_factory=list)
    """Instances whose pixel data no decoder can read."""

    @property
    def name_in_list(self) -> str:
        """How OHIF's study list writes the patient name (``FAMILY^GIVEN`` as ``FAMILY, GIVEN``)."""
        family, _, given = self.patient_name.partition("^")
        return f"{family}, {given}" if given else family


def _part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """The linear VOI function of PS3.3 C.11.2.1.2.1, to 0..255."""
    lo = center - 0.5 - (width - 1) / 2
    out = (values.astype(np.float64) - lo) / (width - 1) * 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def _ct_expected(ds: Dataset) -> np.ndarray:
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center = float(_first(ds.WindowCenter))
    width = float(_first(ds.WindowWidth))
    return _window(hu, center, width)


def _first(value: object) -> object:
    return value[0] if isinstance(value, pydicom.multival.MultiValue) else value


def _restamp(ds: Dataset, study: Study, series_uid: str, number: int) -> Dataset:
    """The dataset with this study's identity and fresh instance UIDs."""
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = study.patient_name
    ds.PatientID = study.key.upper()
    ds.StudyDescription = study.description
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500"
    ds.AccessionNumber = study.key.upper()[:16]
    ds.InstanceNumber = number
    return ds


def _new_study(key: str, description: str) -> Study:
    return Study(
        key=key,
        patient_name=f"VIEWER^{key.upper()}",
        description=description,
        study_uid=generate_uid(),
    )


CT_SLICE_SHIFT = 24
"""Columns each CT slice is rolled by against the previous one: far enough that a viewer showing
a neighbouring slice fails the comparison (correlation ~0.8 at 10 columns)."""


def ct_series_study(slices: int = 10) -> Study:
    """A 10-slice CT series (the real 693_UNCI slice, rolled per slice), native little endian."""
    study = _new_study("ct", "arca viewer CT series")
    series_uid = generate_uid()
    for i in range(slices):
        ds = ct_dataset(i, study_uid=study.study_uid, series_uid=series_uid)
        ds = _restamp(ds, study, series_uid, i + 1)
        pixels = ds.pixel_array
        ds.PixelData = np.roll(pixels, CT_SLICE_SHIFT * i, axis=1).astype(pixels.dtype).tobytes()
        ds.SeriesDescription = "CT native"
        study.files.append(_part10(ds))
        study.expected[(str(ds.SOPInstanceUID), 1)] = _ct_expected(ds)
    return study


def ultrasound_study() -> Study:
    """pydicom's 30-frame US Multi-frame Image (JPEG baseline, YBR_FULL_422, 320x240)."""
    study = _new_study("us", "arca viewer US cine")
    ds = _restamp(pydicom.dcmread(testdata("examples_ybr_color.dcm")), study, generate_uid(), 1)
    ds.SeriesDescription = "US multi-frame"
    study.files.append(_part10(ds))
    frames = ds.pixel_array  # pydicom converts YBR to RGB for JPEG baseline
    for number, rgb in enumerate(frames, start=1):
        study.expected[(str(ds.SOPInstanceUID), number)] = _luma(rgb)
    return study


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, the grey a screenshot of the colour image is compared by."""
    weights = np.array([0.299, 0.587, 0.114])
    return np.clip(rgb.astype(np.float64) @ weights, 0, 255).astype(np.uint8)


def j2k_study() -> Study:
    """pydicom-data's real CT slice stored as JPEG 2000 lossless (693_J2KR.dcm)."""
    study = _new_study("j2k", "arca viewer JPEG 2000")
    ds = _restamp(pydicom.dcmread(testdata("693_J2KR.dcm")), study, generate_uid(), 1)
    ds.SeriesDescription = "CT JPEG 2000 lossless"
    study.files.append(_part10(ds))
    study.expected[(str(ds.SOPInstanceUID), 1)] = _ct_expected(ds)
    return study


def _jpegls_ct(study: Study, series_uid: str, number: int) -> Dataset:
    ds = _restamp(pydicom.dcmread(testdata("693_UNCI.dcm")), study, series_uid, number)
    ds.compress(JPEGLSLossless)
    return ds


def jpegls_study() -> Study:
    """The real CT slice compressed to JPEG-LS lossless with CharLS (pyjpegls)."""
    study = _new_study("jls", "arca viewer JPEG-LS")
    ds = _jpegls_ct(study, generate_uid(), 1)
    ds.SeriesDescription = "CT JPEG-LS lossless"
    study.files.append(_part10(ds))
    study.expected[(str(ds.SOPInstanceUID), 1)] = _ct_expected(ds)
    return study


GOOD_SERIES = "good slice"
BROKEN_SERIES = "corrupt JPEG-LS scan"


def broken_study() -> Study:
    """A good JPEG-LS CT series (number 1) and a series (number 2) whose one instance is a
    JPEG-LS object with a corrupt scan: valid DICOM, valid encapsulation (PS3.5 A.4), a valid
    JPEG-LS header, but entropy-coded data that no decoder can read (CharLS reports "the
    encoded bit stream contains a general structural problem").

    (A JPEG 2000 codestream broken the same way is no use here: cornerstone's OpenJPEG build
    returns an empty 0x0 image for it without any error, so the viewer shows nothing and says
    nothing.)
    """
    study = _new_study("broken", "arca viewer broken instance")
    good = _jpegls_ct(study, generate_uid(), 1)
    good.SeriesNumber = 1
    good.SeriesDescription = GOOD_SERIES
    study.files.append(_part10(good))
    study.expected[(str(good.SOPInstanceUID), 1)] = _ct_expected(good)

    bad = _jpegls_ct(study, generate_uid(), 1)
    bad.SeriesNumber = 2
    bad.SeriesDescription = BROKEN_SERIES
    fragments = list(generate_fragments(bad.PixelData))[1:]  # item 0 is the offset table
    codestream = bytearray(b"".join(fragments))
    scan = codestream.find(b"\xff\xda")  # SOS: the scan header, then the coded data
    scan_data = scan + 2 + int.from_bytes(codestream[scan + 2 : scan + 4], "big")
    codestream[scan_data + 64 : -16] = b"\xff" * (len(codestream) - scan_data - 80)
    bad.PixelData = encapsulate([bytes(codestream)])
    study.files.append(_part10(bad))
    study.broken_sop_uids.append(str(bad.SOPInstanceUID))
    return study


def all_studies() -> list[Study]:
    return [ct_series_study(), ultrasound_study(), j2k_study(), jpegls_study(), broken_study()]


def write_files(studies: list[Study], folder: Path) -> list[Path]:
    """The studies' Part-10 files in ``folder`` (for loading by other means than STOW)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for study in studies:
        for i, data in enumerate(study.files):
            path = folder / f"{study.key}_{i:03d}.dcm"
            path.write_bytes(data)
            paths.append(path)
    return paths
