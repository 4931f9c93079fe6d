"""The one error table: every lower-layer error has its HTTP answer, readable, without traces."""

from __future__ import annotations

import json

import pytest

from conformance.statuses import StowFailure
from dicomweb.errors import HttpError, check_uid, response_for, stow_failure_for
from dicomweb.media import MalformedContentType, NotAcceptable, UnsupportedMediaType
from dicomweb.multipart import BodyTooLarge, MalformedMultipart
from storage.errors import (
    CorruptBlob,
    DuplicateInstance,
    IngestRejected,
    InvalidQuery,
    NotFound,
    OutOfResources,
    StoreUnavailable,
)
from transcoding.errors import CorruptPixelData, NoCodec, WorkerCrashed


@pytest.mark.parametrize(
    ("exc", "status", "text"),
    [
        (NotFound("no such study 1.2"), 404, "no such study"),
        (InvalidQuery("bad date"), 400, "bad date"),
        (OutOfResources("disk full"), 507, "disk full"),
        (StoreUnavailable("database down"), 503, "database down"),
        (CorruptBlob("sha mismatch abc"), 500, "integrity check"),
        (NoCodec("no HTJ2K encoder"), 406, "HTJ2K"),
        (CorruptPixelData("bad J2K stream"), 500, "bad J2K"),
        (WorkerCrashed("segfault"), 503, "segfault"),
        (NotAcceptable("want json"), 406, "want json"),
        (UnsupportedMediaType("send dicom"), 415, "send dicom"),
        (MalformedContentType("no boundary"), 400, "no boundary"),
        (MalformedMultipart("truncated"), 400, "truncated"),
        (BodyTooLarge(10), 413, "10 bytes"),
        (HttpError(400, "bad UID"), 400, "bad UID"),
        (RuntimeError("secret internals"), 500, "internal error"),
    ],
)
def test_error_table(exc: BaseException, status: int, text: str) -> None:
    r = response_for(exc)
    body = json.loads(bytes(r.body))
    assert r.status_code == status == body["status"]
    assert text in body["error"]
    assert r.headers["content-type"] == "application/json"
    assert "Traceback" not in body["error"] and "secret" not in body["error"]
    retry = isinstance(exc, StoreUnavailable | WorkerCrashed)
    assert ("retry-after" in r.headers) == retry


def test_stow_failure_reasons() -> None:
    dup = DuplicateInstance(StowFailure.DUPLICATE_SOP_INSTANCE, "other bytes")
    assert stow_failure_for(dup) == (StowFailure.DUPLICATE_SOP_INSTANCE, "other bytes")
    bad = IngestRejected(StowFailure.CANNOT_UNDERSTAND, "not DICOM")
    assert stow_failure_for(bad)[0] == StowFailure.CANNOT_UNDERSTAND
    assert stow_failure_for(OutOfResources("full"))[0] == StowFailure.OUT_OF_RESOURCES
    assert stow_failure_for(ValueError("x"))[0] == StowFailure.PROCESSING_FAILURE


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2", "1", "2.25.0123"])
def test_valid_uids(uid: str) -> None:
    assert check_uid(uid, "X") == uid


@pytest.mark.parametrize("uid", ["", "1..2", ".1", "1.", "1.2a", "1" * 65, "1.2 ", "1,2"])
def test_invalid_uids(uid: str) -> None:
    with pytest.raises(HttpError) as info:
        check_uid(uid, "StudyInstanceUID")
    assert info.value.status == 400 and "StudyInstanceUID" in info.value.message
