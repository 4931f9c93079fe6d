"""Benchmark data: real 512x512 CT slices cloned into series and studies with fresh UIDs.

The source is pydicom-data's real head CT slice ``693_UNCI.dcm`` (16-bit signed, explicit VR
little endian, ~526 KB). Every clone gets new Study/Series/SOP Instance UIDs and its own pixel
content: the slice is rolled by a per-slice offset and a deterministic per-slice noise patch is
written into one corner, so no two instances carry the same bytes and no content-keyed cache or
deduplicating store can cheat. Compressed sizes stay those of a real CT image (most of the
image is the real anatomy), which matters for the JPEG 2000 / JPEG-LS figures.

Generated sets are cached under ``bench/work/data/<name>`` with a manifest; a set is reused
only when its manifest says it was written with the same parameters.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset
from pydicom.uid import generate_uid

SOURCE = "693_UNCI.dcm"
GENERATOR_VERSION = 2
"""Bumped whenever the bytes this module writes change, so stale caches are rewritten."""


@dataclass(frozen=True)
class SeriesSet:
    """One generated study: its UIDs and the files in slice order."""

    name: str
    study_uid: str
    series_uids: list[str]
    paths: list[Path]
    sop_instance_uids: list[str]
    total_bytes: int

    def __len__(self) -> int:
        return len(self.paths)


def _source() -> tuple[FileDataset, np.ndarray]:
    found = get_testdata_file(SOURCE)
    if found is None:
        raise FileNotFoundError(f"pydicom-data is not installed: no {SOURCE}")
    ds = pydicom.dcmread(str(found))
    return ds, ds.pixel_array


def _pixels(base: np.ndarray, index: int, seed: int) -> bytes:
    """The real slice, shifted by ``index``, with a deterministic 16x16 noise patch."""
    rows = np.roll(base, (index // 7) % 32, axis=0)
    img = np.roll(rows, index % 512, axis=1).copy()
    rng = np.random.default_rng(seed * 1_000_003 + index)
    img[:16, :16] = rng.integers(-1000, 1000, size=(16, 16), dtype=img.dtype)
    return img.astype(base.dtype).tobytes()


def generate(
    root: Path,
    name: str,
    instances: int,
    *,
    series: int = 1,
    patient_id: str = "BENCH0001",
    seed: int = 1,
) -> SeriesSet:
    """Write (or reuse) ``instances`` slices split over ``series`` series of one new study."""
    out = root / name
    manifest = out / "manifest.json"
    params = {
        "version": GENERATOR_VERSION,
        "instances": instances,
        "series": series,
        "patient_id": patient_id,
        "seed": seed,
    }
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved.get("params") == params:
            cached = [out / p for p in saved["files"]]
            if all(p.exists() for p in cached):
                return SeriesSet(
                    name=name,
                    study_uid=saved["study_uid"],
                    series_uids=saved["series_uids"],
                    paths=cached,
                    sop_instance_uids=saved["sop_instance_uids"],
                    total_bytes=sum(p.stat().st_size for p in cached),
                )
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.dcm"):
        old.unlink()
    src, base = _source()
    study_uid = str(generate_uid())
    series_uids = [str(generate_uid()) for _ in range(series)]
    per_series = -(-instances // series)
    paths: list[Path] = []
    sops: list[str] = []
    for i in range(instances):
        s = i // per_series
        ds = src.copy()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uids[s]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i - s * per_series + 1
        ds.SeriesNumber = s + 1
        ds.PatientID = patient_id
        ds.PatientName = f"BENCH^{name.upper()}"
        ds.AccessionNumber = f"A{seed:04d}{zlib.crc32(name.encode()) % 10000:04d}"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240115"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.StudyID = name[:16]
        z = 1.25 * (i - s * per_series)
        ds.ImagePositionPatient = [-125.0, -125.0, z]
        ds.SliceLocation = z
        ds.PixelData = _pixels(base, i, seed)
        path = out / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sops.append(str(ds.SOPInstanceUID))
    manifest.write_text(
        json.dumps(
            {
                "params": params,
                "study_uid": study_uid,
                "series_uids": series_uids,
                "files": [p.name for p in paths],
                "sop_instance_uids": sops,
            }
        )
    )
    return SeriesSet(
        name=name,
        study_uid=study_uid,
        series_uids=series_uids,
        paths=paths,
        sop_instance_uids=sops,
        total_bytes=sum(p.stat().st_size for p in paths),
    )
