"""The precomputed DICOM JSON equals pydicom's own rendering (PS3.18 F.2), except where
the standard is explicit and pydicom differs (empty sequences carry no "Value", F.2.5)."""

from __future__ import annotations

import os
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from storage.metadata import dataset_to_json, parse_bulkdata_path

FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "OT-PAL-8-face.dcm",  # implicit VR: Pixel Data is OW
    "SC_rgb_jpeg_dcmd.dcm",
    "emri_small_jpeg_2k_lossless.dcm",  # encapsulated: OB
    "reportsi.dcm",  # empty sequences
    "test-SR.dcm",  # nested sequences
    "rtstruct.dcm",
    "693_J2KR.dcm",
    "MR-SIEMENS-DICOM-WithOverlays.dcm",  # overlay data (binary, not pixel data)
]


def _normalize(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if key.endswith("0000"):
            continue  # group lengths
        value = {k: str(v) if k == "vr" else v for k, v in value.items()}
        if "BulkDataURI" in value:
            value["BulkDataURI"] = "bulk"
        if value["vr"] == "SQ":
            items = [_normalize(item) for item in value.get("Value", [])]
            value = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        out[key] = value
    return out


@pytest.mark.parametrize("name", FILES)
def test_json_matches_pydicom(name: str) -> None:
    path = get_testdata_file(name)
    deferred = pydicom.dcmread(path, defer_size=256, force=True)
    ours = dataset_to_json(deferred, threshold=0, uri_prefix="x")
    full = pydicom.dcmread(path, force=True)
    theirs = full.to_json_dict(bulk_data_threshold=0, bulk_data_element_handler=lambda _: "x")
    assert _normalize(ours) == _normalize(theirs), os.path.basename(path)


def test_bulkdata_paths_name_their_element() -> None:
    ds = pydicom.dcmread(get_testdata_file("MR-SIEMENS-DICOM-WithOverlays.dcm"))
    ours = dataset_to_json(ds, threshold=16, uri_prefix="arca-base:/x/bulkdata")

    def uris(obj: dict[str, Any]) -> list[str]:
        found = []
        for value in obj.values():
            if "BulkDataURI" in value:
                found.append(value["BulkDataURI"])
            for item in value.get("Value", []) if value["vr"] == "SQ" else []:
                found += uris(item)
        return found

    all_uris = uris(ours)
    assert "arca-base:/x/bulkdata/7FE00010" in all_uris
    assert "arca-base:/x/bulkdata/60003000" in all_uris  # OverlayData
    for uri in all_uris:
        parse_bulkdata_path(uri.split("/bulkdata/", 1)[1])


@pytest.mark.parametrize("bad", ["", "7FE0001", "7FE00010/x", "00540016/0", "zzzzzzzz"])
def test_bad_bulkdata_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_bulkdata_path(bad)
