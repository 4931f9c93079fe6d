"""DICOM JSON / XML conversion and base URLs behind proxies."""

from __future__ import annotations

import json

from lxml import etree
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from starlette.datastructures import Headers

from dicomweb.dicom_json import dataset_to_json, join_metadata
from dicomweb.dicom_xml import NAMESPACE, json_to_xml
from dicomweb.urls import base_url

NS = {"d": NAMESPACE}


def sample() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^John^M^Dr^Jr"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesNumber = 4
    ds.SliceThickness = 1.25
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    item = Dataset()
    item.CodeValue = "T-A0100"
    item.CodingSchemeDesignator = "SRT"
    ds.AnatomicRegionSequence = Sequence([item])
    ds.add_new(0x00091010, "OB", b"\x00\x01")
    return ds


def test_json_to_xml_follows_native_model() -> None:
    root = etree.fromstring(json_to_xml(dataset_to_json(sample())))
    assert root.tag == f"{{{NAMESPACE}}}NativeDicomModel"
    tags = [a.get("tag") for a in root.findall("d:DicomAttribute", NS)]
    assert tags == sorted(tags)
    pn = root.find("d:DicomAttribute[@keyword='PatientName']/d:PersonName", NS)
    assert pn is not None and pn.get("number") == "1"
    alpha = pn.find("d:Alphabetic", NS)
    assert alpha is not None
    assert [c.tag.split("}")[1] for c in alpha] == [
        "FamilyName",
        "GivenName",
        "MiddleName",
        "NamePrefix",
        "NameSuffix",
    ]
    assert alpha.findtext("d:FamilyName", namespaces=NS) == "Doe"
    values = root.findall("d:DicomAttribute[@keyword='ImageType']/d:Value", NS)
    assert [(v.get("number"), v.text) for v in values] == [("1", "ORIGINAL"), ("2", "PRIMARY")]
    assert root.findtext("d:DicomAttribute[@tag='00180050']/d:Value", namespaces=NS) == "1.25"
    code = root.find(
        "d:DicomAttribute[@keyword='AnatomicRegionSequence']/d:Item[@number='1']"
        "/d:DicomAttribute[@keyword='CodeValue']/d:Value",
        NS,
    )
    assert code is not None and code.text == "T-A0100"
    inline = root.find("d:DicomAttribute[@tag='00091010']/d:InlineBinary", NS)
    assert inline is not None and inline.text == "AAE="


def test_xml_of_a_real_header_parses_and_keeps_every_attribute() -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    obj = dataset_to_json(ds)
    root = etree.fromstring(json_to_xml(obj))
    assert len(root.findall("d:DicomAttribute", NS)) == len(obj)


def test_bulkdata_uri_in_xml_and_join_metadata() -> None:
    item = json.dumps(
        {
            "7FE00010": {
                "vr": "OW",
                "BulkDataURI": "arca-base:/studies/1/series/2/instances/3/bulkdata/7FE00010",
            }
        }
    ).encode()
    joined = join_metadata([item, item], "https://pacs.example/dicom-web")
    objs = json.loads(joined)
    assert len(objs) == 2
    uri = objs[0]["7FE00010"]["BulkDataURI"]
    assert uri == "https://pacs.example/dicom-web/studies/1/series/2/instances/3/bulkdata/7FE00010"
    root = etree.fromstring(json_to_xml(objs[0]))
    bulk = root.find("d:DicomAttribute/d:BulkData", NS)
    assert bulk is not None and bulk.get("uri") == uri


def test_base_url_plain_and_forwarded() -> None:
    plain = Headers({"host": "127.0.0.1:8042"})
    assert base_url(plain, "http", "127.0.0.1:8042", "", "/dicom-web") == (
        "http://127.0.0.1:8042/dicom-web"
    )
    fwd = Headers({"forwarded": 'for=1.2.3.4;proto=https;host="pacs.example:443", for=5.6.7.8'})
    assert base_url(fwd, "http", "internal:8042", "", "/dicom-web") == (
        "https://pacs.example:443/dicom-web"
    )
    xf = Headers(
        {
            "x-forwarded-host": "viewer.example, proxy2",
            "x-forwarded-proto": "https",
            "x-forwarded-prefix": "/pacs/",
        }
    )
    assert base_url(xf, "http", "internal", "", "/dicom-web") == (
        "https://viewer.example/pacs/dicom-web"
    )
    hostile = Headers({"x-forwarded-proto": "javascript"})
    assert base_url(hostile, "http", "h", "/app", "/dw").startswith("http://h/app/dw")


def test_base_url_escapes_what_would_break_json() -> None:
    evil = Headers({"x-forwarded-host": 'evil"host\\x', "x-forwarded-prefix": "/a b<c>"})
    url = base_url(evil, "http", "h", "", "/dicom-web")
    assert '"' not in url and "\\" not in url and " " not in url and "<" not in url
    joined = join_metadata([b'{"7FE00010":{"vr":"OW","BulkDataURI":"arca-base:/x"}}'], url)
    assert json.loads(joined)[0]["7FE00010"]["BulkDataURI"] == url + "/x"
