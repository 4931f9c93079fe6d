"""Small DICOM objects for storage tests, built with pydicom (no external files)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from pathlib import Path

from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_counter = itertools.count(1)


def make_dataset(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    sop_class: str = CT_IMAGE_STORAGE,
    patient_id: str = "PAT001",
    patient_name: str = "Doe^John",
    study_date: str = "20240115",
    study_time: str = "101500",
    accession: str = "ACC001",
    modality: str = "CT",
    series_number: int = 1,
    instance_number: int | None = None,
    rows: int = 4,
    columns: int = 4,
    frames: int = 1,
    pixel_value: int = 0,
    **extra: object,
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop or generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number if instance_number is not None else next(_counter)
    ds.StudyID = "S1"
    ds.ReferringPhysicianName = "Welby^Marcus"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = bytes([pixel_value & 0xFF]) * (rows * columns * 2 * frames)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write(ds: Dataset, directory: Path, name: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"{ds.SOPInstanceUID}.dcm")
    # Not enforce_file_format: that would rewrite File Meta from the data set, and tests
    # need File Meta that disagrees with it.
    ds.preamble = b"\x00" * 128
    ds.save_as(path, implicit_vr=False, little_endian=True)
    return path


def write_bare(ds: Dataset, directory: Path) -> Path:
    """The data set without preamble or File Meta (as a C-STORE payload arrives)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{ds.SOPInstanceUID}.bare"
    bare = ds.copy()
    del bare.file_meta
    bare.preamble = None
    bare.save_as(path, implicit_vr=True, little_endian=True)
    return path


def renderable_corpus(renders: Callable[[Path], object]) -> list[Path]:
    """The pydicom wheel's and pydicom-data's test files (up to 2 MB) for which
    ``renders(path)`` succeeds: not every one is a data set pydicom can render."""
    found: list[Path] = []
    for name in sorted(get_testdata_files("*")):
        path = Path(name)
        if path.suffix.lower() not in (".dcm", "") or path.stat().st_size > 2_000_000:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                renders(path)
            except Exception:
                continue
        found.append(path)
    return found
