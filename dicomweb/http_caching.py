"""HTTP caching of instance-level pixel resources: strong ETags, Cache-Control, 304.

A stored instance never changes under its SOP Instance UID (PS3.3 C.12.1.1.1: the UID
identifies one object), and the index keeps its SHA-256. A frame or rendered image of it is a
function of that SHA-256 and of the request's negotiated parameters, so its ETag is computed
from those alone (RFC 9110 §8.8.3), before any bytes are read or decoded, and a matching
``If-None-Match`` is answered 304 with no work at all (RFC 9110 §13.1.2).
"""

from __future__ import annotations

import hashlib

from starlette.requests import Request
from starlette.responses import Response

CACHE_CONTROL = "private, max-age=31536000, immutable"
"""private: DICOM objects are patient data (a shared cache must not keep them); immutable:
an instance's bytes never change under its UID."""


def etag_for(*parts: str) -> str:
    """A strong entity tag (quoted) for a representation made from ``parts``."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:40]
    return f'"{digest}"'


def caching_headers(etag: str) -> dict[str, str]:
    # Vary: the representation depends on the Accept header (media type, transfer syntax).
    return {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept"}


def not_modified(request: Request, etag: str) -> Response | None:
    """304 when ``If-None-Match`` names ``etag`` (or ``*``), else None (RFC 9110 §13.1.2:
    weak comparison, so ``W/"..."`` matches too)."""
    header = request.headers.get("if-none-match")
    if not header:
        return None
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    if "*" in tags or etag in tags:
        return Response(status_code=304, headers=caching_headers(etag))
    return None


def boundary_for(etag: str) -> str:
    """A multipart boundary fixed by the ETag: a strong ETag promises the same bytes, so a
    multipart body cannot use a random boundary. It is derived from the instance's SHA-256
    and the request, so content cannot be made to contain it."""
    return "arca-" + etag.strip('"')[:32]
