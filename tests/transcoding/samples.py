"""Helpers for the transcoding tests: sample files, reading, dciodvfy."""

from __future__ import annotations

import io
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

DCIODVFY = "/usr/bin/dciodvfy"


def sample_file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"test file {name} is not installed")
    return Path(str(path))


def read(data: bytes | Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(data, bytes):
            return pydicom.dcmread(io.BytesIO(data))
        return pydicom.dcmread(data)


def dciodvfy_errors(path: Path) -> set[str]:
    """The ``Error`` lines dciodvfy reports for a file (it writes them to stderr)."""
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {line.strip() for line in lines if line.startswith("Error")}


def clone_with_pixels(name: str, count: int) -> list[bytes]:
    """``count`` Part-10 copies of a single-frame sample, each with its pixels rolled a little and
    a fresh SOP Instance UID, so no two encode to the same bytes (no cache can cheat)."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    src = read(sample_file(name))
    base = src.pixel_array
    out = []
    for i in range(count):
        ds = src.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = np.roll(base, i + 1, axis=1).astype(base.dtype).tobytes()
        ds["PixelData"].VR = "OW"
        ds.PixelData = ds.PixelData  # plain (not encapsulated) now
        ds["PixelData"].is_undefined_length = False
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def synthetic_image(pixels: np.ndarray, photometric: str = "MONOCHROME2", **attrs: object) -> bytes:
    """A minimal Secondary Capture Part-10 file (Explicit VR LE) holding ``pixels``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.PatientName, ds.PatientID = "TEST^RENDER", "R1"
    frames = pixels.shape[0] if pixels.ndim == (4 if photometric == "RGB" else 3) else 1
    rows, columns = pixels.shape[-3:-1] if photometric == "RGB" else pixels.shape[-2:]
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
