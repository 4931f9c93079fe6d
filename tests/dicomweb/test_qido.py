"""QIDO-RS against the real server, with dicomweb-client and raw HTTP."""

from __future__ import annotations

import re

import pytest
from pydicom.dataset import Dataset

from tests.dicomweb.conftest import DicomwebServer, Instance, make_instance, unique_patient

CT = "CT_small.dcm"


@pytest.fixture(scope="module")
def study(dicomweb_server: DicomwebServer) -> list[Instance]:
    """Two series of one study (CT and MR) and a second study of the same patient."""
    pid = unique_patient()
    a = make_instance(CT, patient_id=pid, patient_name="Quiddo^Alice", study_date="20240115")
    b = make_instance(
        CT,
        patient_id=pid,
        study=a.study,
        series=a.series,
        patient_name="Quiddo^Alice",
        study_date="20240115",
    )
    c = make_instance(
        "MR_small.dcm",
        patient_id=pid,
        study=a.study,
        patient_name="Quiddo^Alice",
        study_date="20240115",
    )
    d = make_instance(CT, patient_id=pid, patient_name="Quiddo^Alice", study_date="20230301")
    result = dicomweb_server.client().store_instances([x.ds for x in (a, b, c, d)])
    assert len(result.ReferencedSOPSequence) == 4
    return [a, b, c, d]


def uids(objects: list[dict[str, object]], tag: str) -> set[str]:
    return {o[tag]["Value"][0] for o in objects}  # type: ignore[index]


def test_studies_by_patient_id_name_wildcard_and_date_range(
    dw: DicomwebServer, study: list[Instance]
) -> None:
    a, _, _, d = study
    client = dw.client()
    by_id = client.search_for_studies(search_filters={"PatientID": a.ds.PatientID})
    assert uids(by_id, "0020000D") == {a.study, d.study}
    by_name = client.search_for_studies(
        search_filters={"PatientName": "Quiddo^Al*", "PatientID": a.ds.PatientID}
    )
    assert uids(by_name, "0020000D") == {a.study, d.study}
    in_2024 = client.search_for_studies(
        search_filters={"PatientID": a.ds.PatientID, "StudyDate": "20240101-20241231"}
    )
    assert uids(in_2024, "0020000D") == {a.study}
    # dicomweb-client sends ``Host`` without the port, so compare from the path on.
    for obj in in_2024:
        assert obj["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{a.study}")
    with dw.http() as http:  # httpx sends host:port, and the URL carries it
        exact = http.get("/studies", params={"StudyInstanceUID": a.study}).json()
    assert exact[0]["00081190"]["Value"][0] == f"{dw.url}/studies/{a.study}"


def test_tag_hex_keys_uid_lists_includefield_limit_offset(
    dw: DicomwebServer, study: list[Instance]
) -> None:
    a, _, _, d = study
    with dw.http() as http:
        r = http.get(
            "/studies",
            params=[
                ("0020000D", f"{a.study},{d.study}"),
                ("includefield", "00081030,StudyID"),
                ("includefield", "PatientBirthDate"),
                ("limit", "1"),
                ("offset", "0"),
            ],
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    assert len(r.json()) == 1
    with dw.http() as http:
        page2 = http.get("/studies", params={"0020000D": f"{a.study},{d.study}", "offset": "1"})
    assert len(page2.json()) == 1
    assert uids(r.json(), "0020000D") | uids(page2.json(), "0020000D") == {a.study, d.study}


def test_series_and_instances_at_every_nesting(dw: DicomwebServer, study: list[Instance]) -> None:
    a, b, c, _ = study
    client = dw.client()
    series = client.search_for_series(study_instance_uid=a.study)
    assert uids(series, "0020000E") == {a.series, c.series}
    ct_only = client.search_for_series(
        study_instance_uid=a.study, search_filters={"Modality": "CT"}
    )
    assert uids(ct_only, "0020000E") == {a.series}
    top = client.search_for_series(search_filters={"StudyInstanceUID": a.study})
    assert uids(top, "0020000E") == {a.series, c.series}
    in_series = client.search_for_instances(
        study_instance_uid=a.study, series_instance_uid=a.series
    )
    assert uids(in_series, "00080018") == {a.sop, b.sop}
    assert (
        f"/dicom-web/studies/{a.study}/series/{a.series}/instances/"
        in (in_series[0]["00081190"]["Value"][0])
    )
    in_study = client.search_for_instances(study_instance_uid=a.study)
    assert uids(in_study, "00080018") == {a.sop, b.sop, c.sop}
    one = client.search_for_instances(search_filters={"SOPInstanceUID": c.sop})
    assert uids(one, "00080018") == {c.sop}


def test_no_match_is_empty_array(dw: DicomwebServer) -> None:
    with dw.http() as http:
        r = http.get("/studies", params={"PatientID": unique_patient()})
    assert (r.status_code, r.json()) == (200, [])


def test_unknown_attribute_and_fuzzy_answer_warning(
    dw: DicomwebServer, study: list[Instance]
) -> None:
    with dw.http() as http:
        r = http.get(
            "/studies",
            params={
                "PatientID": study[0].ds.PatientID,
                "NoSuchKeyword": "x",
                "fuzzymatching": "true",
            },
        )
    assert r.status_code == 200, r.text
    assert r.headers["warning"].startswith("299 ")
    assert "NoSuchKeyword" in r.headers["warning"]
    assert len(r.json()) == 2


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"StudyDate": "2024-01-01x"}, "StudyDate|00080020|DA"),
        ({"limit": "-1"}, "limit"),
        ({"offset": "many"}, "offset"),
        ({"fuzzymatching": "maybe"}, "fuzzymatching"),
        ({"StudyInstanceUID": "1.2.x"}, "UID"),
    ],
)
def test_invalid_values_are_400(dw: DicomwebServer, params: dict[str, str], reason: str) -> None:
    with dw.http() as http:
        r = http.get("/studies", params=params)
    assert r.status_code == 400, r.text
    assert re.search(reason, r.json()["error"]), r.json()


def test_bad_uid_in_path_and_bad_accept(dw: DicomwebServer) -> None:
    with dw.http() as http:
        assert http.get("/studies/1..2/series").status_code == 400
        r = http.get("/studies", headers={"Accept": "text/html"})
    assert r.status_code == 406 and "application/dicom+json" in r.json()["error"]


def test_xml_results_and_forwarded_urls(dw: DicomwebServer, study: list[Instance]) -> None:
    a = study[0]
    with dw.http() as http:
        r = http.get(
            f"/studies/{a.study}/series",
            headers={
                "Accept": 'multipart/related; type="application/dicom+xml"',
                "Forwarded": "proto=https;host=pacs.example",
            },
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom+xml"')
    assert r.content.count(b"<NativeDicomModel") == 2
    assert f"https://pacs.example/dicom-web/studies/{a.study}/series/".encode() in r.content


def test_json_results_parse_as_datasets(dw: DicomwebServer, study: list[Instance]) -> None:
    found = dw.client().search_for_studies(search_filters={"StudyInstanceUID": study[0].study})
    ds = Dataset.from_json(found[0])
    assert ds.PatientID == study[0].ds.PatientID
    assert str(ds.PatientName) == "Quiddo^Alice"


@pytest.mark.parametrize(
    "params",
    [
        {"StudyDate": "-20240101"},
        {"StudyTime": "1200-1300"},
        {"PatientName": ""},
        {"AccessionNumber": "*"},
        {"PatientID": "?abc*"},
        {"ModalitiesInStudy": "CT\\MR"},
        {"ReferencedSeriesSequence.SeriesInstanceUID": "1.2.3"},
        {"00400275.00401001": "X"},
        {"includefield": "all"},
        {"includefield": "00100010,ZZZZ"},
        {"limit": "0"},
        {"offset": "100000"},
        {"0010001": "x"},
        {"ZZZZZZZZ": "x"},
        {"0020000D": ""},
        {"PatientBirthDate": "19700101-"},
        {"StudyDescription": "héllo wörld"},
    ],
)
def test_odd_queries_never_fail_the_server(dw: DicomwebServer, params: dict[str, str]) -> None:
    with dw.http() as http:
        for level in ("/studies", "/series", "/instances"):
            r = http.get(level, params=params)
            assert r.status_code in (200, 400), (level, params, r.status_code, r.text)
            body = r.json()
            if r.status_code == 400:
                assert body["status"] == 400 and body["error"]
            else:
                assert isinstance(body, list)


def test_study_list_as_ohif_asks_json_and_xml(dw: DicomwebServer, study: list[Instance]) -> None:
    """A viewer's study list (PS3.18 §10.6.3): newest study first, its computed attributes
    (counts, ModalitiesInStudy, InstanceAvailability), included attributes even when empty,
    RetrieveURL; the next page holds only the next study, with its own counts."""
    a, _, _, d = study
    params = [
        ("PatientID", a.ds.PatientID),
        ("limit", "1"),
        ("offset", "0"),
        ("includefield", "00081030,00080060"),
    ]
    with dw.http() as http:
        [first] = http.get("/studies", params=params).json()
        [second] = http.get("/studies", params=[*params[:2], ("offset", "1"), *params[3:]]).json()
        xml = http.get(
            "/studies",
            params=params,
            headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
        )
    assert first["0020000D"] == {"vr": "UI", "Value": [a.study]}
    assert first["00201206"] == {"vr": "IS", "Value": [2]}
    assert first["00201208"] == {"vr": "IS", "Value": [3]}
    assert first["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert first["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert first["00080060"] == {"vr": "CS"}  # asked for, no value at the study level
    assert first["00100020"] == {"vr": "LO", "Value": [a.ds.PatientID]}
    assert first["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Quiddo^Alice"}]}
    assert first["00080020"] == {"vr": "DA", "Value": ["20240115"]}
    assert first["00081190"]["Value"][0] == f"{dw.url}/studies/{a.study}"
    tags = [t for t in first if t != "00081190"]
    assert tags == sorted(tags)
    assert second["0020000D"]["Value"] == [d.study]
    assert (second["00201206"], second["00201208"]) == (
        {"vr": "IS", "Value": [1]},
        {"vr": "IS", "Value": [1]},
    )
    assert second["00080061"] == {"vr": "CS", "Value": ["CT"]}
    # The XML of the same page (PS3.19 A.1) carries the same computed attributes.
    assert xml.status_code == 200 and xml.content.count(b"<NativeDicomModel") == 1
    for fragment in (
        b'tag="00201208" vr="IS" keyword="NumberOfStudyRelatedInstances"><Value number="1">3<',
        b'keyword="ModalitiesInStudy"><Value number="1">CT</Value><Value number="2">MR<',
        b'keyword="InstanceAvailability"><Value number="1">ONLINE<',
    ):
        assert fragment in xml.content, xml.content
