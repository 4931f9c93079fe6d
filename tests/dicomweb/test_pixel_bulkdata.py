"""Pixel Data as bulk data (PS3.18 §8.7.3.3): for compressed objects it is the frames, in the
stored syntax when the Accept allows it, else decoded; never the item-encoded value."""

from __future__ import annotations

import numpy as np
from pydicom.encaps import generate_frames

from conformance.transfer_syntaxes import EXPLICIT_VR_LITTLE_ENDIAN, JPEG_2000_LOSSLESS
from tests.dicomweb.conftest import (
    DicomwebServer,
    make_instance,
    multipart_parts,
    unique_patient,
)


def _pixel_bulkdata_url(dw: DicomwebServer, study: str, series: str, sop: str) -> str:
    return f"{dw.url}/studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE00010"


def test_compressed_pixel_data_as_stored_frames_or_decoded(dw: DicomwebServer) -> None:
    j2k = make_instance("693_J2KR.dcm", patient_id=unique_patient())
    dw.client().store_instances([j2k.ds])
    url = _pixel_bulkdata_url(dw, j2k.study, j2k.series, j2k.sop)
    [stored_frame] = list(generate_frames(j2k.ds.PixelData, number_of_frames=1))
    with dw.http() as http:
        as_stored = http.get(
            url,
            headers={
                "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
            },
        )
        decoded = http.get(
            url, headers={"Accept": 'multipart/related; type="application/octet-stream"'}
        )
    assert as_stored.status_code == 200, as_stored.text
    [(headers, body)] = multipart_parts(as_stored.content, as_stored.headers["content-type"])
    assert f"transfer-syntax={JPEG_2000_LOSSLESS}" in headers["content-type"]
    assert body == stored_frame  # the codestream, not the item-encoded Pixel Data value
    assert not body.startswith(b"\xfe\xff\x00\xe0")

    assert decoded.status_code == 200, decoded.text
    [(headers, body)] = multipart_parts(decoded.content, decoded.headers["content-type"])
    assert EXPLICIT_VR_LITTLE_ENDIAN in headers["content-type"]
    pixels = np.frombuffer(body, dtype=j2k.ds.pixel_array.dtype).reshape(j2k.ds.pixel_array.shape)
    assert np.array_equal(pixels, j2k.ds.pixel_array)
