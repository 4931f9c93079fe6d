"""``arca import`` on a folder tree while ``arca serve`` runs on the same data."""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom

from tests.conftest import ArcaProcess
from tests.data import ct_series, small_ct, testdata
from tests.system.http import instance_uids, retrieve_instance_bytes


def test_import_folder_recursively_while_serving(arca_server: ArcaProcess, tmp_path: Path) -> None:
    tree = tmp_path / "cdrom"
    series = ct_series(4, tree / "PATIENT" / "STUDY" / "SERIES1")
    small = tree / "PATIENT" / "STUDY" / "SERIES2" / "IM0001"  # no extension, like media
    small.parent.mkdir(parents=True)
    small.write_bytes(small_ct(study_uid=series.study_uid, patient_id=series.patient_id))
    (tree / "README.TXT").write_text("not DICOM\n")
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}

    result = arca_server.cli("import", str(tree))

    assert result.returncode == 1, result.stdout + result.stderr  # something was rejected
    assert "importing" in result.stderr and "6/6" in result.stderr  # the tqdm progress bar
    out = result.stdout
    assert "arca import: 6 files: 5 stored, 0 already present, 1 rejected" in out, out
    assert f"{tree / 'README.TXT'}: CANNOT_UNDERSTAND (0xC000)" in out
    # The sources are left as they were.
    assert {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()} == before

    with httpx.Client(timeout=30) as client:
        found = instance_uids(client, arca_server.dicomweb_url, series.study_uid)
        assert len(found) == 5
        assert set(series.sop_instance_uids) <= found
        sop = series.sop_instance_uids[1]
        stored = retrieve_instance_bytes(
            client, arca_server.dicomweb_url, series.study_uid, series.series_uid, sop
        )
        assert stored == series.paths[1].read_bytes()

    again = arca_server.cli("import", "--quiet", str(tree / "PATIENT"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "arca import: 5 files: 0 stored, 5 already present, 0 rejected" in again.stdout
    assert "importing" not in again.stderr  # --quiet: no progress bar

    # Same SOPInstanceUID as a stored slice, other content: a duplicate (policy reject).
    dup = pydicom.dcmread(series.paths[0])
    dup.PatientName = "OTHER^NAME"
    dup.save_as(tmp_path / "dup.dcm", enforce_file_format=True)
    rejected = arca_server.cli("import", str(tmp_path / "dup.dcm"))
    assert rejected.returncode == 1
    assert "1 files: 0 stored, 0 already present, 1 rejected" in rejected.stdout
    assert f"{tmp_path / 'dup.dcm'}: DUPLICATE_SOP_INSTANCE (0x0111)" in rejected.stdout


def test_import_single_file_and_missing_path(arca_server: ArcaProcess) -> None:
    result = arca_server.cli("import", str(testdata("CT_small.dcm")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 files: 1 stored" in result.stdout
    missing = arca_server.cli("import", "/nonexistent/folder")
    assert missing.returncode == 2
    assert "/nonexistent/folder: no such file or folder" in missing.stderr


def test_verify_reports_on_a_fresh_archive(arca_server: ArcaProcess) -> None:
    result = arca_server.cli("verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "arca verify: 0 instances checked" in result.stdout
    assert "OK: 0 missing, 0 corrupt, 0 orphans" in result.stdout
