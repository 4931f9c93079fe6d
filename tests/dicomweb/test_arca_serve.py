"""The DICOMweb layer as ``arca serve`` mounts it: one round trip through the real CLI server."""

from __future__ import annotations

import httpx
from dicomweb_client.api import DICOMwebClient

from tests.conftest import ArcaProcess
from tests.dicomweb.conftest import make_instance, multipart_parts, unique_patient


def test_store_search_retrieve_delete_through_arca_serve(arca_session: ArcaProcess) -> None:
    pid = unique_patient()
    a = make_instance("CT_small.dcm", patient_id=pid)
    b = make_instance("693_J2KR.dcm", patient_id=pid, study=a.study)
    client = DICOMwebClient(arca_session.dicomweb_url)
    stored = client.store_instances([a.ds, b.ds])
    assert len(stored.ReferencedSOPSequence) == 2
    found = client.search_for_series(study_instance_uid=a.study)
    assert {s["0020000E"]["Value"][0] for s in found} == {a.series, b.series}
    with httpx.Client(base_url=arca_session.dicomweb_url, timeout=60) as http:
        r = http.get(f"/studies/{a.study}")
        assert r.status_code == 200
        parts = {p for _, p in multipart_parts(r.content, r.headers["content-type"])}
        assert parts == {a.data, b.data}
        rendered = http.get(
            f"/studies/{b.study}/series/{b.series}/instances/{b.sop}/rendered",
            headers={"Accept": "image/png"},
        )
        assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")
        assert http.delete(f"/studies/{a.study}").status_code == 204
        assert http.get("/studies", params={"PatientID": pid}).json() == []
