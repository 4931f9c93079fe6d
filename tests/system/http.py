"""Small DICOMweb client helpers for the system tests (raw HTTP, so bytes can be compared)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import httpx

from tests.data import multipart_related, stow_content_type

DICOM_MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'
SOP_INSTANCE_UID = "00080018"
SERIES_INSTANCE_UID = "0020000E"
STUDY_INSTANCE_UID = "0020000D"


def boundary_of(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            return value.strip().strip('"')
    raise ValueError(f"no boundary in {content_type!r}")


def parse_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The payloads of a multipart/related body (RFC 2046 §5.1.1), headers dropped."""
    delimiter = b"--" + boundary_of(content_type).encode()
    parts: list[bytes] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, payload = chunk.partition(b"\r\n\r\n")
        assert sep, f"part without header/body separator: {head[:80]!r}"
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        parts.append(payload)
    return parts


def stow(client: httpx.Client, dicomweb_url: str, files: Iterable[bytes]) -> httpx.Response:
    """POST one STOW-RS request with every file as a part."""
    return client.post(
        dicomweb_url + "/studies",
        content=multipart_related(list(files)),
        headers={"Content-Type": stow_content_type(), "Accept": "application/dicom+json"},
    )


def streamed_parts(parts: Iterable[bytes], boundary: str = "arca-test-boundary") -> Iterator[bytes]:
    """A STOW-RS body produced part by part (for streamed, slow or interrupted uploads)."""
    for part in parts:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def instance_uids(client: httpx.Client, dicomweb_url: str, study_uid: str) -> set[str]:
    """SOPInstanceUIDs QIDO-RS finds in the study (empty when the study is unknown)."""
    r = client.get(
        f"{dicomweb_url}/studies/{study_uid}/instances",
        headers={"Accept": "application/dicom+json"},
    )
    if r.status_code in (204, 404):
        return set()
    assert r.status_code == 200, f"QIDO {r.status_code}: {r.text[:300]}"
    return {item[SOP_INSTANCE_UID]["Value"][0] for item in r.json()}


def retrieve_instance(
    client: httpx.Client, dicomweb_url: str, study: str, series: str, sop: str
) -> httpx.Response:
    """WADO-RS instance retrieve in the stored transfer syntax (``transfer-syntax=*``)."""
    return client.get(
        f"{dicomweb_url}/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": DICOM_MULTIPART},
    )


def retrieve_instance_bytes(
    client: httpx.Client, dicomweb_url: str, study: str, series: str, sop: str
) -> bytes:
    r = retrieve_instance(client, dicomweb_url, study, series, sop)
    assert r.status_code == 200, f"WADO {r.status_code}: {r.text[:300]}"
    parts = parse_multipart(r.content, r.headers["content-type"])
    assert len(parts) == 1, f"{len(parts)} parts for one instance"
    return parts[0]
