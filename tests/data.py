"""Sample DICOM data for arca's tests: pydicom's own test files and a synthetic real-CT series.

``ct_series`` clones pydicom-data's real 512x512 head CT slice (``693_UNCI.dcm``) into a series
with fresh UIDs; each slice's pixels are rolled by its index so that no two slices carry the
same bytes (a content-keyed cache or a deduplicating store cannot pass a test by accident).
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset
from pydicom.uid import generate_uid

CT_SOURCE = "693_UNCI.dcm"
"""pydicom-data: one real CT slice, 512x512, 16-bit signed, explicit VR little endian."""


def testdata(name: str) -> Path:
    """The path of a pydicom (or pydicom-data) test file, e.g. ``testdata("CT_small.dcm")``."""
    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(f"no pydicom test file named {name!r}")
    return Path(str(found))


# Not collected by pytest even though its name starts with "test".
testdata.__test__ = False  # type: ignore[attr-defined]


@functools.cache
def _file_bytes(name: str) -> bytes:
    return testdata(name).read_bytes()


def _fresh(name: str) -> FileDataset:
    """A private, mutable copy of a test file. Parsing cached bytes is much faster than
    copy.deepcopy, and Dataset.copy() is shallow (it would change a shared source)."""
    return pydicom.dcmread(io.BytesIO(_file_bytes(name)))


@functools.cache
def _ct_pixels() -> np.ndarray:
    return _fresh(CT_SOURCE).pixel_array


@dataclass(frozen=True)
class Series:
    """What ``ct_series`` wrote: the files in slice order and their UIDs."""

    paths: list[Path]
    study_uid: str
    series_uid: str
    sop_instance_uids: list[str]
    patient_id: str

    def __len__(self) -> int:
        return len(self.paths)


def ct_dataset(
    index: int,
    *,
    study_uid: str,
    series_uid: str,
    patient_id: str = "ARCA0001",
    patient_name: str = "ARCA^TEST",
    accession_number: str = "ACC0001",
    study_date: str = "20240115",
    series_number: int = 1,
) -> Dataset:
    """Slice ``index`` (0-based) of a synthetic series built from the real CT slice."""
    pixels = _ct_pixels()
    ds = _fresh(CT_SOURCE)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = index + 1
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.AccessionNumber = accession_number
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.ImagePositionPatient = [0.0, 0.0, 5.0 * index]
    ds.SliceLocation = 5.0 * index
    # Rolling the real image keeps it realistic (and as compressible) while making every slice
    # different from the others.
    ds.PixelData = np.roll(pixels, index + 1, axis=1).astype(pixels.dtype).tobytes()
    return ds


def ct_series(
    n: int,
    tmp_dir: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "ARCA0001",
    patient_name: str = "ARCA^TEST",
    accession_number: str = "ACC0001",
    study_date: str = "20240115",
    series_number: int = 1,
    prefix: str = "ct",
) -> Series:
    """Write ``n`` Part-10 CT slices into ``tmp_dir`` (created if needed), fresh UIDs by default."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    study = study_uid or generate_uid()
    series = series_uid or generate_uid()
    paths: list[Path] = []
    uids: list[str] = []
    for i in range(n):
        ds = ct_dataset(
            i,
            study_uid=study,
            series_uid=series,
            patient_id=patient_id,
            patient_name=patient_name,
            accession_number=accession_number,
            study_date=study_date,
            series_number=series_number,
        )
        path = tmp_dir / f"{prefix}_{series_number:03d}_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        uids.append(str(ds.SOPInstanceUID))
    return Series(paths, study, series, uids, patient_id)


def multipart_related(parts: Sequence[bytes], boundary: str = "arca-test-boundary") -> bytes:
    """A ``multipart/related; type="application/dicom"`` body (PS3.18 §8.6.1.2) for STOW-RS."""
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        out += part
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def stow_content_type(boundary: str = "arca-test-boundary") -> str:
    """The Content-Type header matching :func:`multipart_related`."""
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def small_ct(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "ARCASMALL",
    instance_number: int = 1,
) -> bytes:
    """pydicom's CT_small.dcm (128x128, ~39 KB) with fresh UIDs, as Part-10 bytes.

    Cheap to make in a loop (load and concurrency tests) where the 512x512 slice would spend
    the test's CPU on building data instead of driving the server."""
    ds = _fresh("CT_small.dcm")
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient_id
    ds.InstanceNumber = instance_number
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def uids_of(data: bytes) -> tuple[str, str, str]:
    """(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) of Part-10 bytes."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
