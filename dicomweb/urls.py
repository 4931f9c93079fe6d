"""URLs a response points back at: the DICOMweb root as the client sees it, RetrieveURLs.

Behind a reverse proxy the Host and scheme uvicorn sees are not the client's. The base URL
honours, in order: ``Forwarded`` (RFC 7239, first element: ``host=``, ``proto=``), then
``X-Forwarded-Host`` / ``X-Forwarded-Proto`` / ``X-Forwarded-Prefix``, then the request itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import quote

from starlette.requests import Request

from dicomweb.media import split_outside_quotes, unquote

_URL_SAFE = ":/?#[]@!$&'()*+,;=%-._~"

BaseUrl = Callable[[Request], str]
"""request → the DICOMweb root's URL as the client sees it."""


def _forwarded(value: str) -> dict[str, str]:
    # Only the first element counts: the proxy nearest the client appended it first.
    first = split_outside_quotes(value, ",")[0]
    pairs: dict[str, str] = {}
    for piece in split_outside_quotes(first, ";"):
        name, eq, v = piece.partition("=")
        if eq:
            pairs[name.strip().lower()] = unquote(v)
    return pairs


def _first(value: str | None) -> str | None:
    if not value:
        return None
    head = value.split(",")[0].strip()
    return head or None


def base_url(headers: Mapping[str, str], scheme: str, host: str, root_path: str, root: str) -> str:
    """``scheme://host[prefix]<root_path><dicomweb root>`` with no trailing slash.

    ``headers`` must be case-insensitive (Starlette's Headers are).
    """
    proto: str | None = None
    fwd_host: str | None = None
    forwarded = headers.get("forwarded")
    if forwarded:
        pairs = _forwarded(forwarded)
        proto, fwd_host = pairs.get("proto"), pairs.get("host")
    proto = proto or _first(headers.get("x-forwarded-proto"))
    fwd_host = fwd_host or _first(headers.get("x-forwarded-host"))
    prefix = (_first(headers.get("x-forwarded-prefix")) or "").rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    scheme = (proto or scheme).lower()
    if scheme not in ("http", "https"):
        scheme = "http"
    host = fwd_host or host
    url = f"{scheme}://{host}{prefix}{root_path.rstrip('/')}{root}"
    # The URL is pasted into JSON strings and XML attributes verbatim (join_metadata):
    # anything a client put in Host / X-Forwarded-* that is not a URL character is escaped.
    return quote(url, safe=_URL_SAFE)


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, instance: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{instance}"


def base_url_of(request: Request, root: str) -> str:
    """The DICOMweb root URL of ``request`` (``root`` = settings.http.dicomweb_root)."""
    host = request.headers.get("host") or (
        f"{request.url.hostname}:{request.url.port}" if request.url.port else request.url.netloc
    )
    return base_url(
        request.headers, request.url.scheme, host, str(request.scope.get("root_path", "")), root
    )


def warning_header(request: Request, notes: list[str]) -> str:
    """``299 <host> "<notes>"`` (RFC 7234 §5.5 warn-code 299, as PS3.18 §8.3.4 uses it).

    Header values must be latin-1 and one line: notes are flattened and quotes escaped."""
    text = "; ".join(notes)
    text = " ".join(text.split()).replace("\\", "\\\\").replace('"', '\\"')
    text = text.encode("latin-1", "replace").decode("latin-1")[:2000]
    agent = request.headers.get("host") or "arca"
    return f'299 {agent} "{text}"'
