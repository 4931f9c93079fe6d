"""WADO-RS against the real server: instances byte for byte, transcoding, metadata, bulk data,
frames, rendered, thumbnails and deletion."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames

from conformance.transfer_syntaxes import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000_LOSSLESS,
    JPEG_LS_LOSSLESS,
)
from tests.dicomweb.conftest import (
    DicomwebServer,
    Instance,
    make_instance,
    make_series,
    multipart_parts,
    open_fds,
    unique_patient,
)

DICOM_MULTIPART = 'multipart/related; type="application/dicom"'


@pytest.fixture(scope="module")
def stored(dicomweb_server: DicomwebServer) -> dict[str, Instance]:
    """One study: a native CT, a J2K CT, native and J2K multi-frame MRs (two series)."""
    pid = unique_patient()
    ct = make_instance("CT_small.dcm", patient_id=pid)
    j2k = make_instance("693_J2KR.dcm", patient_id=pid, study=ct.study, series=ct.series)
    mf = make_instance("emri_small.dcm", patient_id=pid, study=ct.study)
    mf_j2k = make_instance(
        "emri_small_jpeg_2k_lossless.dcm", patient_id=pid, study=ct.study, series=mf.series
    )
    items = {"ct": ct, "j2k": j2k, "mf": mf, "mf_j2k": mf_j2k}
    result = dicomweb_server.client().store_instances([i.ds for i in items.values()])
    assert len(result.ReferencedSOPSequence) == 4
    return items


def url(i: Instance) -> str:
    return f"/studies/{i.study}/series/{i.series}/instances/{i.sop}"


def test_study_series_instance_byte_for_byte(
    dw: DicomwebServer, stored: dict[str, Instance]
) -> None:
    ct = stored["ct"]
    with dw.http() as http:
        study = http.get(f"/studies/{ct.study}", headers={"Accept": DICOM_MULTIPART})
        series = http.get(f"/studies/{ct.study}/series/{ct.series}")
        one = http.get(url(ct), headers={"Accept": "application/dicom"})
    assert study.status_code == 200
    assert study.headers["content-type"].startswith(DICOM_MULTIPART)
    got = {p for _, p in multipart_parts(study.content, study.headers["content-type"])}
    assert got == {i.data for i in stored.values()}
    series_parts = multipart_parts(series.content, series.headers["content-type"])
    assert {p for _, p in series_parts} == {ct.data, stored["j2k"].data}
    assert one.headers["content-type"].startswith("application/dicom")
    assert one.content == ct.data


def test_dicomweb_client_retrieves_parsed_datasets(
    dw: DicomwebServer, stored: dict[str, Instance]
) -> None:
    client = dw.client()
    mf = stored["mf"]
    datasets = client.retrieve_series(mf.study, mf.series)
    assert {str(d.SOPInstanceUID) for d in datasets} == {mf.sop, stored["mf_j2k"].sop}
    inst = client.retrieve_instance(mf.study, mf.series, mf.sop)
    assert np.array_equal(inst.pixel_array, mf.ds.pixel_array)


def test_transcode_j2k_to_explicit_little_endian(
    dw: DicomwebServer, stored: dict[str, Instance]
) -> None:
    j2k = stored["j2k"]
    accept = f"{DICOM_MULTIPART}; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    with dw.http() as http:
        r = http.get(url(j2k), headers={"Accept": accept})
    assert r.status_code == 200, r.text
    [(headers, part)] = multipart_parts(r.content, r.headers["content-type"])
    assert EXPLICIT_VR_LITTLE_ENDIAN in headers["content-type"]
    ds = pydicom.dcmread(io.BytesIO(part))
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    assert np.array_equal(ds.pixel_array, j2k.ds.pixel_array)


def test_series_transcode_keeps_order_and_mixes_stored(
    dw: DicomwebServer, stored: dict[str, Instance]
) -> None:
    mf, mf_j2k = stored["mf"], stored["mf_j2k"]
    accept = (
        f"{DICOM_MULTIPART}; transfer-syntax={JPEG_LS_LOSSLESS}, "
        f"{DICOM_MULTIPART}; transfer-syntax={JPEG_2000_LOSSLESS}; q=0.5"
    )
    with dw.http() as http:
        r = http.get(f"/studies/{mf.study}/series/{mf.series}", headers={"Accept": accept})
    assert r.status_code == 200, r.text
    parts = multipart_parts(r.content, r.headers["content-type"])
    by_uid = {}
    for headers, part in parts:
        ds = pydicom.dcmread(io.BytesIO(part))
        by_uid[str(ds.SOPInstanceUID)] = (headers["content-type"], ds)
    assert set(by_uid) == {mf.sop, mf_j2k.sop}
    # The J2K object is acceptable as stored; the native one goes to JPEG-LS lossless.
    assert by_uid[mf_j2k.sop][1].file_meta.TransferSyntaxUID == JPEG_2000_LOSSLESS
    assert by_uid[mf.sop][1].file_meta.TransferSyntaxUID == JPEG_LS_LOSSLESS
    assert np.array_equal(by_uid[mf.sop][1].pixel_array, mf.ds.pixel_array)


def test_no_transcoder_answers_406_with_reason(
    dw: DicomwebServer, stored: dict[str, Instance]
) -> None:
    j2k = stored["j2k"]
    accept = f"{DICOM_MULTIPART}; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    import httpx

    with httpx.Client(base_url=dw.no_codec_url) as http:
        r = http.get(url(j2k), headers={"Accept": accept})
        stored_ok = http.get(url(j2k), headers={"Accept": DICOM_MULTIPART})
    assert r.status_code == 406
    assert "no transcoder" in r.json()["error"]
    assert stored_ok.status_code == 200


def test_metadata_json_and_bulkdata_uris_resolve(
    dw: DicomwebServer, stored: dict[str, Instance]
) -> None:
    ct = stored["ct"]
    client = dw.client()
    meta = client.retrieve_instance_metadata(ct.study, ct.series, ct.sop)
    assert meta["00080018"]["Value"] == [ct.sop]
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith("http://127.0.0.1") and "/dicom-web/studies/" in uri
    with dw.http() as http:
        study_meta = http.get(f"/studies/{ct.study}/metadata")
        series_meta = http.get(f"/studies/{ct.study}/series/{ct.series}/metadata")
        path = uri.split("/dicom-web", 1)[1]
        pixels = http.get(path, headers={"Accept": "application/octet-stream"})
        ranged = http.get(
            path, headers={"Accept": "application/octet-stream", "Range": "bytes=10-19"}
        )
        bad_range = http.get(path, headers={"Range": "bytes=99999999-"})
    assert len(study_meta.json()) == 4 and len(series_meta.json()) == 2
    assert all(f"{dw.url}/studies/" in o["7FE00010"]["BulkDataURI"] for o in study_meta.json())
    assert pixels.status_code == 200 and pixels.content == ct.ds.PixelData
    assert ranged.status_code == 206 and ranged.content == ct.ds.PixelData[10:20]
    assert ranged.headers["content-range"] == f"bytes 10-19/{len(ct.ds.PixelData)}"
    assert bad_range.status_code == 416


def test_dicomweb_client_bulkdata(dw: DicomwebServer, stored: dict[str, Instance]) -> None:
    ct = stored["ct"]
    client = dw.client()
    meta = client.retrieve_instance_metadata(ct.study, ct.series, ct.sop)
    [data] = client.retrieve_bulkdata(
        meta["7FE00010"]["BulkDataURI"].replace(
            "http://127.0.0.1/", dw.url.split("/dicom-web")[0] + "/"
        )
    )
    assert data == ct.ds.PixelData


def test_metadata_xml(dw: DicomwebServer, stored: dict[str, Instance]) -> None:
    ct = stored["ct"]
    with dw.http() as http:
        r = http.get(
            f"{url(ct)}/metadata",
            headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
        )
    assert r.status_code == 200
    [(headers, part)] = multipart_parts(r.content, r.headers["content-type"])
    assert headers["content-type"] == "application/dicom+xml"
    assert ct.sop.encode() in part and b"<BulkData uri=" in part


def test_native_frames_equal_pydicom(dw: DicomwebServer, stored: dict[str, Instance]) -> None:
    mf = stored["mf"]
    frame_bytes = len(mf.ds.PixelData) // 10
    expected = [mf.ds.PixelData[(n - 1) * frame_bytes : n * frame_bytes] for n in (1, 3, 10)]
    frames = dw.client().retrieve_instance_frames(
        mf.study,
        mf.series,
        mf.sop,
        frame_numbers=[1, 3, 10],
        media_types=("application/octet-stream",),
    )
    assert frames == expected


def test_encapsulated_frames_stored_bitstream(
    dw: DicomwebServer, stored: dict[str, Instance]
) -> None:
    mf = stored["mf_j2k"]
    expected = list(generate_frames(mf.ds.PixelData, number_of_frames=10))
    # dicomweb-client's own default for frames: type="*/*"
    frames = dw.client().retrieve_instance_frames(mf.study, mf.series, mf.sop, frame_numbers=[2, 5])
    assert frames == [expected[1], expected[4]]
    with dw.http() as http:
        ohif = http.get(
            f"{url(mf)}/frames/2",
            headers={
                "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"
            },
        )
    [(headers, part)] = multipart_parts(ohif.content, ohif.headers["content-type"])
    assert part == expected[1]
    assert (
        headers["content-type"] == f"application/octet-stream; transfer-syntax={JPEG_2000_LOSSLESS}"
    )


def test_encapsulated_frames_decoded_to_native(
    dw: DicomwebServer, stored: dict[str, Instance]
) -> None:
    mf = stored["mf_j2k"]
    with dw.http() as http:
        r = http.get(
            f"{url(mf)}/frames/4",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
    assert r.status_code == 200, r.text
    [(_, part)] = multipart_parts(r.content, r.headers["content-type"])
    assert (
        part == mf.ds.pixel_array[3].astype("<i2" if mf.ds.PixelRepresentation else "<u2").tobytes()
    )


def test_frames_bad_requests(dw: DicomwebServer, stored: dict[str, Instance]) -> None:
    mf = stored["mf"]
    with dw.http() as http:
        assert http.get(f"{url(mf)}/frames/0").status_code == 400
        assert http.get(f"{url(mf)}/frames/1,x").status_code == 400
        missing = http.get(f"{url(mf)}/frames/11")
        assert missing.status_code == 404 and "10" in missing.json()["error"]
        r = http.get(f"{url(mf)}/frames/1", headers={"Accept": "text/plain"})
        assert r.status_code == 406


@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png", "image/gif"])
def test_rendered_instance(
    dw: DicomwebServer, stored: dict[str, Instance], media_type: str
) -> None:
    ct = stored["ct"]
    with dw.http() as http:
        r = http.get(f"{url(ct)}/rendered", headers={"Accept": media_type})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media_type
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (128, 128)


def test_rendered_params_frames_thumbnails(dw: DicomwebServer, stored: dict[str, Instance]) -> None:
    ct, mf = stored["ct"], stored["mf_j2k"]
    with dw.http() as http:
        small = http.get(
            f"{url(ct)}/rendered",
            params={"viewport": "64,64", "window": "40,400,LINEAR", "quality": "80"},
        )
        frame = http.get(f"{url(mf)}/frames/3/rendered", headers={"Accept": "image/png"})
        thumbs = [
            http.get(f"/studies/{ct.study}/thumbnail"),
            http.get(f"/studies/{ct.study}/series/{ct.series}/thumbnail"),
            http.get(f"{url(ct)}/thumbnail"),
            http.get(f"{url(mf)}/frames/1/thumbnail"),
        ]
        study_rendered = http.get(f"/studies/{ct.study}/rendered")
        sized_thumb = http.get(f"{url(ct)}/thumbnail", params={"viewport": "32,32"})
        bad = http.get(f"{url(ct)}/rendered", params={"window": "wide"})
        bad_q = http.get(f"{url(ct)}/rendered", params={"quality": "101"})
    assert small.status_code == 200, small.text
    assert Image.open(io.BytesIO(small.content)).size == (64, 64)
    assert Image.open(io.BytesIO(frame.content)).size == (64, 64)
    for t in thumbs:
        assert t.status_code == 200, t.text
        w, h = Image.open(io.BytesIO(t.content)).size
        assert max(w, h) <= 128
    assert study_rendered.status_code == 200
    assert Image.open(io.BytesIO(sized_thumb.content)).size == (32, 32)
    assert bad.status_code == 400 and "window" in bad.json()["error"]
    assert bad_q.status_code == 400 and "quality" in bad_q.json()["error"]


def test_not_found_and_bad_uids(dw: DicomwebServer, stored: dict[str, Instance]) -> None:
    ct = stored["ct"]
    with dw.http() as http:
        for path in (
            "/studies/1.2.3.999999",
            f"/studies/{ct.study}/series/1.2.3.4",
            f"/studies/{ct.study}/series/{ct.series}/instances/1.2.3.4/metadata",
            "/studies/1.2.3.999999/metadata",
        ):
            r = http.get(path)
            assert r.status_code == 404, (path, r.text)
            assert r.json()["status"] == 404
        for path in (
            "/studies/abc",
            f"/studies/{ct.study}/series/1.2-3/metadata",
            f"/studies/{ct.study}/series/{ct.series}/instances/{'1' * 65}",
        ):
            r = http.get(path)
            assert r.status_code == 400, (path, r.text)
            assert "not a valid UID" in r.json()["error"]
        r = http.get(url(ct), headers={"Accept": "image/png"})
        assert r.status_code == 406 and "application/dicom" in r.json()["error"]


def test_delete_levels(dw: DicomwebServer) -> None:
    pid = unique_patient()
    a = make_instance("CT_small.dcm", patient_id=pid)
    b = make_instance("CT_small.dcm", patient_id=pid, study=a.study)
    c = make_instance("CT_small.dcm", patient_id=pid, study=a.study, series=b.series)
    dw.client().store_instances([a.ds, b.ds, c.ds])
    with dw.http() as http:
        assert http.delete(url(c)).status_code == 204
        assert http.get(url(c)).status_code == 404
        assert http.delete(url(c)).status_code == 404
        assert http.delete(f"/studies/{a.study}/series/{a.series}").status_code == 204
        left = http.get(f"/studies/{a.study}/instances").json()
        assert [o["00080018"]["Value"][0] for o in left] == [b.sop]
        assert http.delete(f"/studies/{a.study}").status_code == 204
        assert http.get("/studies", params={"PatientID": pid}).json() == []
        assert http.delete("/studies/1.2.x").status_code == 400


def test_json_error_bodies_never_leak_traces(dw: DicomwebServer) -> None:
    with dw.http() as http:
        r = http.get("/studies/1.2.3.999999/series/1.2/instances/1.3/frames/1")
    assert r.status_code == 404
    body = json.loads(r.content)
    assert set(body) == {"error", "status"} and "Traceback" not in r.text


def test_native_frames_transcoded_to_jpeg_ls(
    dw: DicomwebServer, stored: dict[str, Instance]
) -> None:
    import jpeg_ls

    mf = stored["mf"]
    frames = dw.client().retrieve_instance_frames(
        mf.study, mf.series, mf.sop, frame_numbers=[2], media_types=("image/jls",)
    )
    decoded = jpeg_ls.decode(np.frombuffer(frames[0], dtype=np.uint8))
    assert np.array_equal(decoded.astype(mf.ds.pixel_array.dtype), mf.ds.pixel_array[1])


def test_bulkdata_bad_paths_are_404(dw: DicomwebServer, stored: dict[str, Instance]) -> None:
    ct = stored["ct"]
    with dw.http() as http:
        for path in ("zzz", "7FE00010/0", "00100010", "00540016/7/00181072"):
            r = http.get(f"{url(ct)}/bulkdata/{path}")
            assert r.status_code == 404, (path, r.text)
            assert r.json()["status"] == 404


def test_object_without_pixels_has_no_frames_or_rendering(dw: DicomwebServer) -> None:
    plan = make_instance("rtplan.dcm", patient_id=unique_patient())
    dw.client().store_instances([plan.ds])
    with dw.http() as http:
        frames = http.get(f"{url(plan)}/frames/1")
        rendered = http.get(f"{url(plan)}/rendered")
        whole = http.get(url(plan))
    assert frames.status_code == 404 and "no pixel data" in frames.json()["error"]
    assert rendered.status_code == 406 and "pixel data" in rendered.json()["error"]
    assert whole.status_code == 200


def _corrupt_j2k(patient_id: str, study: str, series: str) -> Instance:
    """693_J2KR with its JPEG 2000 codestream replaced by noise (still encapsulated)."""
    from pydicom.encaps import encapsulate

    inst = make_instance("693_J2KR.dcm", patient_id=patient_id, study=study, series=series)
    ds = pydicom.dcmread(io.BytesIO(inst.data))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(256)) * 40])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return Instance(buf.getvalue(), pydicom.dcmread(io.BytesIO(buf.getvalue())))


def test_corrupt_pixel_data_is_left_out_of_a_series_transcode(dw: DicomwebServer) -> None:
    pid = unique_patient()
    good = make_instance("693_J2KR.dcm", patient_id=pid)
    bad = _corrupt_j2k(pid, good.study, good.series)
    dw.client().store_instances([good.ds, bad.ds])
    accept = f"{DICOM_MULTIPART}; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    with dw.http() as http:
        series = http.get(f"/studies/{good.study}/series/{good.series}", headers={"Accept": accept})
        single = http.get(url(bad), headers={"Accept": accept})
        as_stored = http.get(url(bad))
    assert series.status_code == 200
    parts = multipart_parts(series.content, series.headers["content-type"])
    sent = [str(pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID) for _, p in parts]
    assert sent == [good.sop]
    assert single.status_code == 500 and single.json()["error"]
    assert as_stored.status_code == 200 and bad.data in as_stored.content


def test_client_disconnect_mid_series_releases_blobs(dw: DicomwebServer) -> None:
    """The server runs in this process, so its open files are ours to count."""
    import time

    import httpx

    first, *more = make_series("693_UNCI.dcm", 12)
    dw.client().store_instances([i.ds for i in [first, *more]])
    series_url = f"{dw.url}/studies/{first.study}/series/{first.series}"
    with httpx.Client(timeout=60) as http:
        http.get(series_url)  # warm up: connection pools, thread pool
        baseline = open_fds()
        for _ in range(3):
            with http.stream("GET", series_url) as r:
                assert r.status_code == 200
                next(r.iter_raw(65536))
            # leaving the block closes the connection with most of the body unread
    deadline = time.monotonic() + 20
    while open_fds() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= baseline
    with httpx.Client(timeout=60) as http:
        whole = http.get(series_url)
    assert len(multipart_parts(whole.content, whole.headers["content-type"])) == 12


def test_large_instance_streams_and_serves_frames(dw: DicomwebServer) -> None:
    """Over WHOLE_PART_BYTES an instance is streamed in chunks instead of read whole."""
    from dicomweb.wado import WHOLE_PART_BYTES

    pid = unique_patient()
    base = make_instance("emri_small.dcm", patient_id=pid)
    ds = pydicom.dcmread(io.BytesIO(base.data))
    frames = ds.pixel_array
    count = WHOLE_PART_BYTES // frames[0].nbytes + 40
    big = np.concatenate([frames] * (count // len(frames) + 1))[:count]
    big[:, 0, 0] = np.arange(count)  # every frame different
    ds.NumberOfFrames = count
    ds.PixelData = big.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    assert len(data) > WHOLE_PART_BYTES
    dw.client().store_instances([pydicom.dcmread(io.BytesIO(data))])
    inst = Instance(data, ds)
    with dw.http() as http:
        whole = http.get(url(inst))
        series = http.get(f"/studies/{inst.study}/series/{inst.series}")
        last = http.get(
            f"{url(inst)}/frames/{count}",
            headers={"Accept": "multipart/related; type=application/octet-stream"},
        )
    [(_, part)] = multipart_parts(whole.content, whole.headers["content-type"])
    assert part == data
    [(_, part)] = multipart_parts(series.content, series.headers["content-type"])
    assert part == data
    [(_, frame)] = multipart_parts(last.content, last.headers["content-type"])
    assert frame == big[-1].tobytes()


@pytest.mark.parametrize(
    ("suffix", "accept"),
    [
        ("", ";;;,,,"),
        ("", "multipart/related; type="),
        ("", "*/*; q=abc"),
        ("", 'multipart/related; type="application/dicom"; transfer-syntax=9.9.9'),
        ("/frames/1,,2", None),
        ("/frames/99999999999999999999", None),
        ("/frames/1", 'multipart/related; type="image/bogus"'),
        ("/rendered?viewport=0,0", None),
        ("/rendered?viewport=a", None),
        ("/rendered?window=1,0", None),
        ("/metadata", "multipart/related; type=application/dicom"),
        ("/bulkdata/", None),
    ],
)
def test_odd_retrieve_requests_never_fail_the_server(
    dw: DicomwebServer, stored: dict[str, Instance], suffix: str, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept is not None else {}
    with dw.http() as http:
        r = http.get(url(stored["mf"]) + suffix, headers=headers)
    assert r.status_code < 500, (suffix, accept, r.status_code, r.text)
    if r.status_code >= 400:
        assert r.json()["status"] == r.status_code


def test_rle_frames_as_stored_and_decoded(dw: DicomwebServer) -> None:
    rle = make_instance("emri_small_RLE.dcm", patient_id=unique_patient())
    dw.client().store_instances([rle.ds])
    expected = list(generate_frames(rle.ds.PixelData, number_of_frames=10))
    with dw.http() as http:
        stored_form = http.get(f"{url(rle)}/frames/7", headers={"Accept": "*/*"})
        several = http.get(f"{url(rle)}/frames/1,2", headers={"Accept": "*/*"})
        native = http.get(
            f"{url(rle)}/frames/7",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
    assert stored_form.status_code == 200, stored_form.text
    # */* and one frame: single part, in the stored syntax's media type
    assert stored_form.headers["content-type"].startswith("image/dicom-rle; transfer-syntax=")
    assert stored_form.content == expected[6]
    assert [p for _, p in multipart_parts(several.content, several.headers["content-type"])] == (
        expected[:2]
    )
    [(_, pixels)] = multipart_parts(native.content, native.headers["content-type"])
    assert (
        pixels
        == rle.ds.pixel_array[6]
        .astype("<u2" if not rle.ds.PixelRepresentation else "<i2")
        .tobytes()
    )
