"""STOW-RS against the real server: what is stored, what is refused and why, nothing partial."""

from __future__ import annotations

import io
import os
import socket
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import dicomweb.stow
from conformance.statuses import StowFailure
from tests.dicomweb.conftest import (
    MAX_STOW_BYTES,
    DicomwebServer,
    make_instance,
    unique_patient,
)

CT = "CT_small.dcm"
BOUNDARY = "stow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def body_of(*parts: bytes, content_type: str = "application/dicom") -> bytes:
    out = b""
    for p in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + p + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def studies_of(dw: DicomwebServer, patient_id: str) -> list[object]:
    with dw.http() as http:
        r = http.get("/studies", params={"PatientID": patient_id})
    assert r.status_code == 200, r.text
    result: list[object] = r.json()
    return result


def post(dw: DicomwebServer, data: bytes, path: str = "/studies", **headers: str) -> httpx.Response:
    with dw.http() as http:
        return http.post(path, content=data, headers={"Content-Type": CONTENT_TYPE, **headers})


def failed_reasons(r: httpx.Response) -> list[int]:
    ds = Dataset.from_json(r.json())
    return [int(item.FailureReason) for item in ds.get("FailedSOPSequence", [])]


def test_store_with_dicomweb_client_reports_each_instance(dw: DicomwebServer) -> None:
    pid = unique_patient()
    a = make_instance(CT, patient_id=pid)
    b = make_instance(CT, patient_id=pid, study=a.study, series=a.series)
    result = dw.client().store_instances([a.ds, b.ds])
    refs = {str(item.ReferencedSOPInstanceUID): item for item in result.ReferencedSOPSequence}
    assert set(refs) == {a.sop, b.sop}
    assert "FailedSOPSequence" not in result
    # dicomweb-client sends ``Host: 127.0.0.1`` without the port on POST (its workaround for
    # a requests bug), so the URLs follow that Host header.
    assert result.RetrieveURL == f"http://127.0.0.1/dicom-web/studies/{a.study}"
    assert refs[a.sop].RetrieveURL.endswith(
        f"/dicom-web/studies/{a.study}/series/{a.series}/instances/{a.sop}"
    )
    assert refs[a.sop].ReferencedSOPClassUID == a.ds.SOPClassUID
    assert len(studies_of(dw, pid)) == 1


def test_duplicate_identical_instance_is_success(dw: DicomwebServer) -> None:
    inst = make_instance(CT, patient_id=unique_patient())
    assert post(dw, body_of(inst.data)).status_code == 200
    again = post(dw, body_of(inst.data))
    assert again.status_code == 200, again.text
    ds = Dataset.from_json(again.json())
    assert [str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSOPSequence] == [inst.sop]


def test_store_into_study_url(dw: DicomwebServer) -> None:
    inst = make_instance(CT, patient_id=unique_patient())
    r = post(dw, body_of(inst.data), f"/studies/{inst.study}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"


def test_wrong_study_in_url_is_refused(dw: DicomwebServer) -> None:
    pid = unique_patient()
    inst = make_instance(CT, patient_id=pid)
    r = post(dw, body_of(inst.data), f"/studies/{generate_uid()}")
    assert r.status_code == 409, r.text
    assert failed_reasons(r) == [StowFailure.DATASET_DOES_NOT_MATCH_SOP_CLASS]
    item = Dataset.from_json(r.json()).FailedSOPSequence[0]
    assert item.ReferencedSOPInstanceUID == inst.sop
    assert studies_of(dw, pid) == []


def test_non_dicom_and_truncated_parts_fail_good_ones_stored(dw: DicomwebServer) -> None:
    pid = unique_patient()
    good = make_instance(CT, patient_id=pid)
    truncated = make_instance(CT, patient_id=pid, study=good.study)
    r = post(dw, body_of(good.data, b"this is not DICOM at all" * 20, truncated.data[:400]))
    assert r.status_code == 202, r.text
    assert failed_reasons(r) == [StowFailure.CANNOT_UNDERSTAND] * 2
    assert "Warning" in r.headers
    ds = Dataset.from_json(r.json())
    assert [str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSOPSequence] == [good.sop]
    with dw.http() as http:
        found = http.get(f"/studies/{good.study}/instances").json()
    assert [o["00080018"]["Value"][0] for o in found] == [good.sop]


def test_all_parts_failing_is_409_and_stores_nothing(dw: DicomwebServer) -> None:
    pid = unique_patient()
    inst = make_instance(CT, patient_id=pid)
    missing_uids = pydicom.dcmread(io.BytesIO(inst.data))
    del missing_uids.StudyInstanceUID
    del missing_uids.SeriesInstanceUID
    buf = io.BytesIO()
    missing_uids.save_as(buf)
    r = post(dw, body_of(buf.getvalue(), b"\0" * 300))
    assert r.status_code == 409, r.text
    assert failed_reasons(r) == [StowFailure.CANNOT_UNDERSTAND] * 2
    assert studies_of(dw, pid) == []


def test_part_of_another_media_type_fails(dw: DicomwebServer) -> None:
    pid = unique_patient()
    inst = make_instance(CT, patient_id=pid)
    r = post(dw, body_of(inst.data, content_type="application/pdf"))
    assert r.status_code == 409
    assert failed_reasons(r) == [StowFailure.CANNOT_UNDERSTAND]
    assert "application/pdf" in r.headers["Warning"]
    assert studies_of(dw, pid) == []


def test_wrong_content_type_is_415(dw: DicomwebServer) -> None:
    pid = unique_patient()
    inst = make_instance(CT, patient_id=pid)
    with dw.http() as http:
        r1 = http.post("/studies", content=inst.data, headers={"Content-Type": "application/dicom"})
        r2 = http.post(
            "/studies",
            content=body_of(inst.data),
            headers={
                "Content-Type": "multipart/related; "
                f'type="application/dicom+json"; boundary={BOUNDARY}'
            },
        )
    for r in (r1, r2):
        assert r.status_code == 415, r.text
        assert r.json()["status"] == 415 and "application/dicom" in r.json()["error"]
    assert studies_of(dw, pid) == []


def test_malformed_multipart_is_400_and_stores_nothing(dw: DicomwebServer) -> None:
    pid = unique_patient()
    inst = make_instance(CT, patient_id=pid)
    other = make_instance(CT, patient_id=pid)
    cases = {
        "no closing": body_of(inst.data)[: -len(f"--{BOUNDARY}--\r\n")],
        "no boundary delimiter": inst.data,
        # The first part is complete (and prepared while the rest arrives); the body then
        # ends inside the second: still nothing is stored.
        "ends inside a part": body_of(inst.data, other.data)[: -len(f"\r\n--{BOUNDARY}--\r\n")],
    }
    for reason, data in cases.items():
        r = post(dw, data)
        assert r.status_code == 400, r.text
        assert reason in r.json()["error"]
    with dw.http() as http:
        r = http.post(
            "/studies",
            content=body_of(inst.data),
            headers={"Content-Type": 'multipart/related; type="application/dicom"'},
        )
    assert r.status_code == 400 and "boundary" in r.json()["error"]
    assert studies_of(dw, pid) == []


def _spool_files(dw: DicomwebServer) -> list[str]:
    return sorted(p.name for p in dw.spool.rglob("*") if p.is_file())


def test_a_long_request_waits_on_disk_and_stores_every_instance(
    dw: DicomwebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server runs in this process: past 2 parts, prepared analyses are pickled to disk.
    monkeypatch.setattr(dicomweb.stow, "HELD_IN_MEMORY", 2)
    spilled: list[object] = []
    put = dicomweb.stow._SpillFile.put

    async def counting_put(*args: Any) -> Any:
        spilled.append(result := await put(*args))
        return result

    monkeypatch.setattr(dicomweb.stow._SpillFile, "put", counting_put)
    pid = unique_patient()
    first = make_instance(CT, patient_id=pid)
    instances = [first] + [make_instance(CT, patient_id=pid, study=first.study) for _ in range(5)]
    r = post(dw, body_of(*(i.data for i in instances)))
    assert r.status_code == 200, r.text
    assert len(spilled) == 4
    assert all(isinstance(s, dicomweb.stow._Spilled) for s in spilled)  # on disk, not kept
    with dw.http() as http:
        for inst in instances:
            got = http.get(
                f"/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}/metadata"
            )
            assert got.status_code == 200
            assert got.json()[0]["00080018"]["Value"] == [inst.sop]
    assert _spool_files(dw) == []

    # The same, but the body breaks after the sixth part: nothing stored, nothing left.
    pid = unique_patient()
    broken = [make_instance(CT, patient_id=pid) for _ in range(7)]
    data = body_of(*(i.data for i in broken))[: -len(f"\r\n--{BOUNDARY}--\r\n")]
    r = post(dw, data)
    assert r.status_code == 400, r.text
    assert studies_of(dw, pid) == []
    assert _spool_files(dw) == []


def test_body_over_limit_is_413_streamed(dw: DicomwebServer) -> None:
    pid = unique_patient()
    inst = make_instance(CT, patient_id=pid)
    filler = os.urandom(1 << 20)

    def chunks():  # type: ignore[no-untyped-def]
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + inst.data
        yield f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        for _ in range(MAX_STOW_BYTES // len(filler) + 2):
            yield filler
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    with dw.http() as http:
        # No Content-Length: chunked, so the limit is enforced while streaming.
        r = http.post("/studies", content=chunks(), headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 413, r.text
    assert str(MAX_STOW_BYTES) in r.json()["error"]
    assert studies_of(dw, pid) == []


def test_declared_length_over_limit_is_413_before_reading(dw: DicomwebServer) -> None:
    # A raw socket: the client declares a huge body and sends none of it; the answer must
    # come from the Content-Length alone.
    url = httpx.URL(dw.url)
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        head = (
            f"POST {url.path}/studies HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
            f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {MAX_STOW_BYTES + 1}\r\n"
            "Connection: close\r\n\r\n"
        )
        sock.sendall(head.encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_bad_study_uid_in_url_is_400(dw: DicomwebServer) -> None:
    inst = make_instance(CT, patient_id=unique_patient())
    r = post(dw, body_of(inst.data), "/studies/1.2.abc")
    assert r.status_code == 400 and "StudyInstanceUID" in r.json()["error"]


def test_xml_response_when_asked(dw: DicomwebServer) -> None:
    inst = make_instance(CT, patient_id=unique_patient())
    r = post(dw, body_of(inst.data), Accept="application/dicom+xml")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/dicom+xml")
    assert b"NativeDicomModel" in r.content and inst.sop.encode() in r.content


def test_same_uid_other_bytes_is_duplicate_failure(dw: DicomwebServer) -> None:
    pid = unique_patient()
    inst = make_instance(CT, patient_id=pid)
    assert post(dw, body_of(inst.data)).status_code == 200
    other = pydicom.dcmread(io.BytesIO(inst.data))
    other.PatientName = "Someone^Else"
    buf = io.BytesIO()
    other.save_as(buf)
    r = post(dw, body_of(buf.getvalue()))
    assert r.status_code == 409, r.text
    assert failed_reasons(r) == [StowFailure.DUPLICATE_SOP_INSTANCE]
    with dw.http() as http:
        kept = http.get(f"/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}")
    assert kept.status_code == 200 and inst.data in kept.content


def test_unsatisfiable_accept_still_stores_and_answers_json(dw: DicomwebServer) -> None:
    pid = unique_patient()
    inst = make_instance(CT, patient_id=pid)
    r = post(dw, body_of(inst.data), Accept="application/dicom")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    assert len(studies_of(dw, pid)) == 1


def test_quoted_boundary_with_odd_characters_and_empty_body(dw: DicomwebServer) -> None:
    pid = unique_patient()
    inst = make_instance(CT, patient_id=pid)
    boundary = "a b:c=d'(e)+_,-./?"
    data = (
        f"preamble\r\n--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + inst.data
        + f"\r\n--{boundary}--".encode()
    )
    with dw.http() as http:
        r = http.post(
            "/studies",
            content=data,
            headers={
                "Content-Type": f'multipart/related; type=application/dicom; boundary="{boundary}"'
            },
        )
        empty = http.post("/studies", content=b"", headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 200, r.text
    assert empty.status_code == 400 and "boundary" in empty.json()["error"]
    assert len(studies_of(dw, pid)) == 1
