"""Modality Worklist: items made through the REST API, fetched with DCMTK ``findscu -W``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from tests.dimse.dicom_tools import findscu
from tests.dimse.harness import Node

DICOM_JSON = {"Content-Type": "application/dicom+json"}


def item(
    *,
    patient_name: str = "Doe^Jane",
    patient_id: str = "WL001",
    accession: str = "WLACC1",
    station: str = "CT01",
    modality: str = "CT",
    date: str = "20240310",
    time: str = "083000",
    steps: int = 1,
) -> dict[str, Any]:
    ds = Dataset()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.AccessionNumber = accession
    ds.RequestedProcedureID = "RP1"
    ds.RequestedProcedureDescription = "CT head"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    step = Dataset()
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = date
    step.ScheduledProcedureStepStartTime = time
    step.Modality = modality
    step.ScheduledProcedureStepID = "SPS1"
    step.ScheduledProcedureStepDescription = "head without contrast"
    ds.ScheduledProcedureStepSequence = [step] * steps
    return ds.to_json_dict()


def create(node: Node, body: dict[str, Any]) -> dict[str, Any]:
    rsp = httpx.post(f"{node.dicomweb}/worklist", json=body, headers=DICOM_JSON, timeout=30)
    assert rsp.status_code == 201, rsp.text
    assert rsp.headers["location"].startswith(f"{node.dicomweb}/worklist/")
    created: dict[str, Any] = rsp.json()
    assert created["00741000"]["Value"] == ["SCHEDULED"]
    return created


def item_id(created: dict[str, Any]) -> str:
    return str(created["00080018"]["Value"][0])


def mwl(node: Node, tmp_path: Path, *keys: str) -> list[Dataset]:
    base = [
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepSequence[0].Modality",
    ]
    given = {k.split("=")[0] for k in keys}
    return findscu(node.dimse_port, "-W", [*keys, *(k for k in base if k not in given)], tmp_path)


def test_items_created_over_rest_are_found_by_modality_worklist(node: Node, tmp_path: Path) -> None:
    create(
        node, item(patient_name="Worklist^Alpha", patient_id="WLA", station="CTA1", date="20240310")
    )
    create(
        node,
        item(
            patient_name="Worklist^Beta",
            patient_id="WLB",
            station="MRA1",
            modality="MR",
            date="20240311",
        ),
    )
    create(
        node, item(patient_name="Worklist^Gamma", patient_id="WLC", station="CTA1", date="20240420")
    )

    ct = mwl(
        node, tmp_path / "ct", "ScheduledProcedureStepSequence[0].Modality=CT", "PatientID=WL?"
    )
    assert sorted(ds.PatientID for ds in ct) == ["WLA", "WLC"]
    step = ct[0].ScheduledProcedureStepSequence[0]
    assert step.Modality == "CT" and step.ScheduledStationAETitle == "CTA1"
    # Only the requested sub-keys come back (the stored step also has a description).
    assert "ScheduledProcedureStepDescription" not in step

    march = mwl(
        node,
        tmp_path / "march",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20240301-20240331",
        "PatientID=WL*",
    )
    assert sorted(ds.PatientID for ds in march) == ["WLA", "WLB"]

    station = mwl(
        node,
        tmp_path / "station",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=CTA1",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=-20240315",
    )
    assert [ds.PatientID for ds in station] == ["WLA"]

    by_name = mwl(node, tmp_path / "name", "PatientName=worklist^b*")
    assert [str(ds.PatientName) for ds in by_name] == ["Worklist^Beta"]


def test_time_range_and_accession(node: Node, tmp_path: Path) -> None:
    create(node, item(patient_id="WLT1", accession="TACC1", time="0730", date="20250101"))
    create(node, item(patient_id="WLT2", accession="TACC2", time="1415", date="20250101"))
    morning = mwl(
        node,
        tmp_path / "am",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20250101",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=0700-1200",
    )
    assert [ds.PatientID for ds in morning] == ["WLT1"]
    by_accession = mwl(node, tmp_path / "acc", "AccessionNumber=TACC2")
    assert [ds.PatientID for ds in by_accession] == ["WLT2"]


def test_update_and_cancel(node: Node, tmp_path: Path) -> None:
    created = create(node, item(patient_id="WLU1", accession="UACC1"))
    uid = item_id(created)
    url = f"{node.dicomweb}/worklist/{uid}"
    changed = item(patient_id="WLU1", accession="UACC1", station="CTZ9")
    rsp = httpx.put(url, json=changed, headers=DICOM_JSON, timeout=30)
    assert rsp.status_code == 200, rsp.text
    [found] = mwl(node, tmp_path / "upd", "AccessionNumber=UACC1")
    assert found.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "CTZ9"

    rsp = httpx.delete(url, timeout=30)
    assert rsp.status_code == 200, rsp.text
    assert rsp.json()["00741000"]["Value"] == ["CANCELED"]
    assert mwl(node, tmp_path / "gone", "AccessionNumber=UACC1") == []
    # Still readable, listed only on request, and no longer editable.
    assert httpx.get(url, timeout=30).json()["00741000"]["Value"] == ["CANCELED"]
    listed = httpx.get(f"{node.dicomweb}/worklist", params={"AccessionNumber": "UACC1"}, timeout=30)
    assert listed.status_code == 200 and listed.json() == []
    listed = httpx.get(
        f"{node.dicomweb}/worklist",
        params={"AccessionNumber": "UACC1", "includecanceled": "true"},
        timeout=30,
    )
    assert [item_id(x) for x in listed.json()] == [uid]
    rsp = httpx.put(url, json=changed, headers=DICOM_JSON, timeout=30)
    assert rsp.status_code == 409
    # POST .../cancel is the same, and idempotent.
    assert httpx.post(f"{url}/cancel", timeout=30).status_code == 200


def test_rest_search_and_get(node: Node) -> None:
    created = create(
        node, item(patient_name="Search^Me", patient_id="WLS1", accession="SACC1", modality="US")
    )
    rsp = httpx.get(
        f"{node.dicomweb}/worklist",
        params={"PatientName": "search*", "ScheduledProcedureStepSequence.Modality": "US"},
        timeout=30,
    )
    assert rsp.status_code == 200, rsp.text
    assert [item_id(x) for x in rsp.json()] == [item_id(created)]
    one = httpx.get(f"{node.dicomweb}/worklist/{item_id(created)}", timeout=30)
    assert one.status_code == 200
    assert one.json()["00100020"]["Value"] == ["WLS1"]
    assert httpx.get(f"{node.dicomweb}/worklist/1.2.3.999", timeout=30).status_code == 404
    assert httpx.get(f"{node.dicomweb}/worklist/not-a-uid", timeout=30).status_code == 400


def _count(node: Node) -> int:
    rsp = httpx.get(f"{node.dicomweb}/worklist", params={"includecanceled": "true"}, timeout=30)
    return len(rsp.json())


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (item(steps=0), "application/dicom+json", 400, "ScheduledProcedureStepSequence"),
        (item(steps=2), "application/dicom+json", 400, "exactly one item"),
        (item(patient_id=""), "application/dicom+json", 400, "PatientID"),
        (item(date="2024-03-10"), "application/dicom+json", 400, "not a valid DA"),
        (item(date="20240301-20240302"), "application/dicom+json", 400, "one value"),
        (b"{not json", "application/dicom+json", 400, "not JSON"),
        ([item(), item()], "application/dicom+json", 400, "array of 2"),
        (
            {"00100010": {"vr": "XX", "Value": ["A"]}},
            "application/dicom+json",
            400,
            "not a valid DICOM JSON",
        ),
        (item(), "application/xml", 415, "application/dicom+json"),
    ],
    ids=[
        "no-step",
        "two-steps",
        "no-patient-id",
        "bad-date",
        "date-range",
        "not-json",
        "two-items",
        "bad-vr",
        "xml",
    ],
)
def test_invalid_items_are_refused(
    node: Node, body: Any, content_type: str, status: int, reason: str
) -> None:
    before = _count(node)
    content = (
        body if isinstance(body, bytes) else httpx.Request("POST", "http://x", json=body).content
    )
    rsp = httpx.post(
        f"{node.dicomweb}/worklist",
        content=content,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert rsp.status_code == status, rsp.text
    assert reason in rsp.json()["error"]
    assert _count(node) == before


def test_keys_without_matching_support_answer_pending_warning(node: Node) -> None:
    """PS3.4 C.4.1.1.4: 0xFF01 when optional keys were not matched on; items still match on
    the keys that are supported."""
    from pynetdicom import AE

    create(node, item(patient_id="WLW1", accession="WACC1"))
    ae = AE(ae_title="MWLSCU")
    ae.add_requested_context("1.2.840.10008.5.1.4.31")
    assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="ARCA")
    assert assoc.is_established
    ident = Dataset()
    ident.AccessionNumber = "WACC1"
    ident.PatientSex = "F"  # no column: not matched on
    ident.PatientID = ""
    responses = [(int(s.Status), d) for s, d in assoc.send_c_find(ident, "1.2.840.10008.5.1.4.31")]
    assoc.release()
    assert [status for status, _ in responses] == [0xFF01, 0x0000]
    assert responses[0][1].PatientID == "WLW1"
