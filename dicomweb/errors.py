"""The one place where lower layers' errors become HTTP answers (and STOW failure reasons).

Every error body is JSON a person can read: ``{"error": "<what went wrong>", "status": N}``.
No stack trace ever reaches a client; unexpected exceptions are logged and answered 500.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from conformance.statuses import StowFailure
from dicomweb.media import MalformedContentType, NotAcceptable, UnsupportedMediaType
from dicomweb.multipart import BodyTooLarge, MalformedMultipart
from storage.errors import (
    CorruptBlob,
    IngestRejected,
    InvalidQuery,
    MissingBlob,
    NotFound,
    OutOfResources,
    StorageError,
    StoreUnavailable,
)
from transcoding.errors import CorruptPixelData, NoCodec, TranscodingError, WorkerCrashed

log = logging.getLogger("arca.dicomweb")

RETRY_AFTER_SECONDS = "30"


class HttpError(Exception):
    """An HTTP answer decided by this layer (bad UID in a path, bad parameter, ...)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# (exception type, HTTP status, fixed message or None = the exception's own text, retry)
# First match wins, so subclasses come before their bases.
ERROR_TABLE: tuple[tuple[type[BaseException], int, str | None, bool], ...] = (
    (NotFound, 404, None, False),
    (InvalidQuery, 400, None, False),
    (IngestRejected, 409, None, False),
    (OutOfResources, 507, None, False),
    (StoreUnavailable, 503, None, True),
    (
        CorruptBlob,
        500,
        "the stored object failed its integrity check (SHA-256 mismatch); it is not served",
        False,
    ),
    (MissingBlob, 500, None, False),
    (StorageError, 500, "storage error", False),
    (NoCodec, 406, None, False),
    (CorruptPixelData, 500, None, False),
    (WorkerCrashed, 503, None, True),
    (TranscodingError, 500, "transcoding error", False),
    (NotAcceptable, 406, None, False),
    (UnsupportedMediaType, 415, None, False),
    (MalformedContentType, 400, None, False),
    (MalformedMultipart, 400, None, False),
    (BodyTooLarge, 413, None, False),
)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": message, "status": status}).encode("utf-8")
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def response_for(exc: BaseException) -> Response:
    """Translate an exception into its HTTP answer (logging what a person must look at)."""
    if isinstance(exc, HttpError):
        return error_response(exc.status, exc.message, exc.headers)
    for kind, status, fixed, retry in ERROR_TABLE:
        if isinstance(exc, kind):
            message = fixed or str(exc) or kind.__name__
            if status >= 500:
                log.error("%s: %s", kind.__name__, exc)
            headers = {"Retry-After": RETRY_AFTER_SECONDS} if retry else None
            return error_response(status, message, headers)
    log.exception("unexpected error", exc_info=exc)
    return error_response(500, "internal error; see the server log")


def stow_failure_for(exc: BaseException) -> tuple[StowFailure, str]:
    """FailureReason (0008,1197) and a note for an instance that was not stored."""
    if isinstance(exc, IngestRejected):
        return exc.failure, exc.message
    if isinstance(exc, OutOfResources):
        return StowFailure.OUT_OF_RESOURCES, str(exc) or "out of resources"
    if isinstance(exc, StoreUnavailable):
        return StowFailure.PROCESSING_FAILURE, f"storage unavailable: {exc}"
    log.exception("ingest failed unexpectedly", exc_info=exc)
    return StowFailure.PROCESSING_FAILURE, "processing failure; see the server log"


Endpoint = Callable[[Request], Awaitable[Response]]


def translated(endpoint: Endpoint) -> Endpoint:
    """Wrap an endpoint so every exception it raises becomes the table's answer."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:  # the edge: nothing escapes untranslated
            return response_for(exc)

    return wrapper


# PS3.5 §9.1: digit components separated by "."; leading zeros are tolerated because
# real-world objects carry them and must stay retrievable. At most 64 characters.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(value: str, what: str) -> str:
    """A UID from a URL path, or 400 saying which segment is wrong."""
    if len(value) > 64 or not _UID.match(value):
        raise HttpError(400, f"{what} {value[:80]!r} is not a valid UID (PS3.5 §9.1)")
    return value
