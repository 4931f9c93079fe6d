"""C-FIND (Patient Root, Study Root) with DCMTK findscu: levels, wildcards, ranges."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE

from tests.data import Series, ct_series, multipart_related, small_ct, stow_content_type, uids_of
from tests.dimse.dicom_tools import dcmtk, findscu
from tests.dimse.harness import Node


@dataclass(frozen=True)
class Stored:
    first: Series
    second: Series
    """Another patient, an older study."""


@pytest.fixture(scope="module")
def stored(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    tmp = tmp_path_factory.mktemp("query")
    first = ct_series(
        3,
        tmp / "a",
        patient_id="QPAT1",
        patient_name="Query^Alice",
        study_date="20240115",
        accession_number="QACC1",
    )
    second = ct_series(
        2,
        tmp / "b",
        patient_id="QPAT2",
        patient_name="Other^Bob",
        study_date="20230301",
        accession_number="QACC2",
    )
    files = [str(p) for p in first.paths + second.paths]
    done = dcmtk("storescu", "-aec", "ARCA", "127.0.0.1", str(node.dimse_port), *files)
    assert done.returncode == 0, done.stderr
    yield Stored(first, second)


def test_patient_level_wildcard_is_case_insensitive(
    node: Node, stored: Stored, tmp_path: Path
) -> None:
    found = findscu(
        node.dimse_port,
        "-P",
        ["QueryRetrieveLevel=PATIENT", "PatientName=query*", "PatientID"],
        tmp_path,
    )
    assert [(str(ds.PatientName), ds.PatientID, ds.QueryRetrieveLevel) for ds in found] == [
        ("Query^Alice", "QPAT1", "PATIENT")
    ]


def test_study_root_study_level_date_range(node: Node, stored: Stored, tmp_path: Path) -> None:
    found = findscu(
        node.dimse_port,
        "-S",
        [
            "QueryRetrieveLevel=STUDY",
            "StudyDate=20240101-20241231",
            "StudyInstanceUID",
            "AccessionNumber",
            "PatientID",
        ],
        tmp_path,
    )
    assert [ds.StudyInstanceUID for ds in found] == [stored.first.study_uid]
    assert found[0].AccessionNumber == "QACC1"
    assert found[0].StudyDate == "20240115"
    # Open-ended range: everything up to 2023 finds only the older study.
    older = findscu(
        node.dimse_port,
        "-S",
        ["QueryRetrieveLevel=STUDY", "StudyDate=-20231231", "StudyInstanceUID"],
        tmp_path / "older",
    )
    assert [ds.StudyInstanceUID for ds in older] == [stored.second.study_uid]


def test_patient_root_study_level_under_a_patient(
    node: Node, stored: Stored, tmp_path: Path
) -> None:
    found = findscu(
        node.dimse_port,
        "-P",
        ["QueryRetrieveLevel=STUDY", "PatientID=QPAT2", "StudyInstanceUID", "StudyDate"],
        tmp_path,
    )
    assert [ds.StudyInstanceUID for ds in found] == [stored.second.study_uid]


def test_series_level(node: Node, stored: Stored, tmp_path: Path) -> None:
    found = findscu(
        node.dimse_port,
        "-S",
        [
            "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={stored.first.study_uid}",
            "SeriesInstanceUID",
            "Modality=C?",
            "NumberOfSeriesRelatedInstances",
        ],
        tmp_path,
    )
    assert [ds.SeriesInstanceUID for ds in found] == [stored.first.series_uid]
    assert found[0].Modality == "CT"
    assert found[0].QueryRetrieveLevel == "SERIES"


def test_image_level_uid_list(node: Node, stored: Stored, tmp_path: Path) -> None:
    wanted = stored.first.sop_instance_uids[:2]
    found = findscu(
        node.dimse_port,
        "-P",
        [
            "QueryRetrieveLevel=IMAGE",
            "PatientID=QPAT1",
            f"StudyInstanceUID={stored.first.study_uid}",
            f"SeriesInstanceUID={stored.first.series_uid}",
            "SOPInstanceUID=" + "\\".join(wanted),
            "InstanceNumber",
        ],
        tmp_path,
    )
    assert sorted(ds.SOPInstanceUID for ds in found) == sorted(wanted)
    assert {int(ds.InstanceNumber) for ds in found} == {1, 2}


def test_bad_level_is_identifier_does_not_match(node: Node, stored: Stored) -> None:
    """Study Root has no PATIENT level (PS3.4 C.6.2): 0xA900."""
    from pydicom.dataset import Dataset

    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.1")
    assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="ARCA")
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "PATIENT"
    ident.PatientID = "QPAT1"
    statuses = [int(s.Status) for s, _ in assoc.send_c_find(ident, "1.2.840.10008.5.1.4.1.2.2.1")]
    assoc.release()
    assert statuses == [0xA900]


def test_stowed_instance_is_found_by_c_find(node: Node, tmp_path: Path) -> None:
    data = small_ct(patient_id="STOWFIND")
    study, series, sop = uids_of(data)
    rsp = httpx.post(
        f"{node.dicomweb}/studies",
        content=multipart_related([data]),
        headers={"Content-Type": stow_content_type(), "Accept": "application/dicom+json"},
        timeout=30,
    )
    assert rsp.status_code == 200, rsp.text
    found = findscu(
        node.dimse_port,
        "-S",
        [
            "QueryRetrieveLevel=IMAGE",
            f"StudyInstanceUID={study}",
            f"SeriesInstanceUID={series}",
            "SOPInstanceUID",
        ],
        tmp_path,
    )
    assert [ds.SOPInstanceUID for ds in found] == [sop]
