"""dciodvfy (dicom3tools) on what arca returns: no IOD error the source object did not have.

Real-world files carry errors of their own (693_UNCI.dcm has several), so each retrieved
object is compared with its source: arca must add none, neither when it returns the stored
bytes nor when it transcodes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import ArcaProcess
from tests.data import testdata
from tests.system.http import parse_multipart, stow

DCIODVFY = Path("/usr/bin/dciodvfy")
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"

SOURCES = [
    "693_UNCI.dcm",  # real CT, native
    "693_J2KR.dcm",  # the same slice, JPEG 2000 lossless
    "CT_small.dcm",
    "MR_small.dcm",
    "US1_J2KR.dcm",  # ultrasound, YBR, JPEG 2000
    "SC_rgb_rle.dcm",  # RLE
    "JPEG-LL.dcm",  # JPEG lossless process 14
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools not installed (.ci/run does)"),
]


def iod_errors(path: Path) -> set[str]:
    """The ``Error - ...`` lines dciodvfy prints for ``path``."""
    result = subprocess.run(
        [str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = (result.stdout + result.stderr).splitlines()
    return {line.strip() for line in lines if line.startswith("Error")}


def fresh_copy(name: str, out_dir: Path) -> Path:
    """The test file with new Study/Series/SOP Instance UIDs (sources share UIDs)."""
    ds = pydicom.dcmread(testdata(name))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = out_dir / name
    ds.save_as(path, enforce_file_format=True)
    return path


def retrieve(
    client: httpx.Client, arca: ArcaProcess, ds: pydicom.Dataset, transfer_syntax: str
) -> bytes:
    r = client.get(
        f"{arca.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}",
        headers={
            "Accept": f'multipart/related; type="application/dicom"; '
            f"transfer-syntax={transfer_syntax}"
        },
    )
    assert r.status_code == 200, f"{transfer_syntax}: {r.status_code} {r.text[:300]}"
    parts = parse_multipart(r.content, r.headers["content-type"])
    assert len(parts) == 1
    return parts[0]


def test_retrieved_objects_add_no_iod_errors(arca_server: ArcaProcess, tmp_path: Path) -> None:
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    sources = [fresh_copy(name, src_dir) for name in SOURCES]
    problems: list[str] = []
    with httpx.Client(timeout=120) as client:
        r = stow(client, arca_server.dicomweb_url, [p.read_bytes() for p in sources])
        assert r.status_code == 200, r.text[:500]
        for path in sources:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            stored_syntax = str(ds.file_meta.TransferSyntaxUID)
            source_errors = iod_errors(path)
            targets = ["*", EXPLICIT_VR_LITTLE_ENDIAN]
            if stored_syntax == EXPLICIT_VR_LITTLE_ENDIAN:
                targets.append(JPEG2000_LOSSLESS)
            for target in targets:
                out = out_dir / f"{path.stem}.{target.replace('*', 'stored')}.dcm"
                out.write_bytes(retrieve(client, arca_server, ds, target))
                got = pydicom.dcmread(out, stop_before_pixels=True)
                expected_syntax = stored_syntax if target == "*" else target
                assert str(got.file_meta.TransferSyntaxUID) == expected_syntax
                added = iod_errors(out) - source_errors
                if added:
                    problems.append(f"{path.name} as {target}: " + "; ".join(sorted(added)))
    assert not problems, "arca added IOD errors:\n" + "\n".join(problems)
