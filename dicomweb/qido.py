"""QIDO-RS (PS3.18 §10.6): search for studies, series and instances.

Query parameters become one :class:`storage.query.Query` (PS3.18 §8.3.4, matching per PS3.4
C.2.2.2): attributes by keyword or tag (``PatientName``, ``00100010``, sequence paths
``00400275.00401001``), ``includefield`` (repeatable, comma lists, ``all``), ``limit``,
``offset``, ``fuzzymatching``. Attributes arca cannot match are ignored and named in a
``Warning: 299`` header (§8.3.4); invalid values answer 400 with the reason.

No match answers 200 with an empty array: PS3.18 §10.6.3 (2019 and later) dropped the
former 204 for an empty result, and clients (dicomweb-client, OHIF) parse ``[]``.
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from starlette.requests import Request
from starlette.responses import Response

from dicomweb.dicom_json import json_array_bytes
from dicomweb.dicom_xml import json_to_xml
from dicomweb.errors import HttpError, check_uid
from dicomweb.media import DICOM_XML, negotiate_metadata, parse_accept
from dicomweb.multipart import multipart_content_type, new_boundary, part_header
from dicomweb.urls import BaseUrl, instance_url, series_url, study_url, warning_header
from storage.archive import ArchiveService
from storage.query import MatchKey, Query, QueryLevel

STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018
RETRIEVE_URL = "00081190"
_CONTROL = {"includefield", "limit", "offset", "fuzzymatching"}


def parse_tag(text: str) -> int | None:
    """A keyword (``PatientName``) or 8 hex digits (``00100010``) → tag; None if unknown."""
    if len(text) == 8:
        try:
            return int(text, 16)
        except ValueError:
            pass
    tag = tag_for_keyword(text)
    return int(tag) if tag is not None else None


def _known(tag: int) -> bool:
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True


def _nested_key(tags: list[int], value: str) -> MatchKey:
    if len(tags) == 1:
        return MatchKey.parse(tags[0], value)
    return MatchKey.sequence(tags[0], (_nested_key(tags[1:], value),))


def _merge_sequences(keys: list[MatchKey]) -> list[MatchKey]:
    """Keys on one sequence (``A.B=x&A.C=y``) form one query item (PS3.4 C.2.2.2.6)."""
    merged: dict[int, MatchKey] = {}
    order: list[int] = []
    for key in keys:
        if key.tag in merged and key.vr == "SQ" and merged[key.tag].vr == "SQ":
            items = _merge_sequences([*merged[key.tag].items, *key.items])
            merged[key.tag] = MatchKey.sequence(key.tag, tuple(items))
            continue
        if key.tag not in merged:
            order.append(key.tag)
        merged[key.tag] = key
    return [merged[t] for t in order]


def _parse_bool(name: str, value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no", ""):
        return False
    raise HttpError(400, f"{name}={value!r}: expected true or false")


def _parse_count(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise HttpError(400, f"{name}={value!r}: expected a non-negative integer") from None
    if n < 0:
        raise HttpError(400, f"{name}={value!r}: expected a non-negative integer")
    return n


def build_query(
    level: QueryLevel, params: list[tuple[str, str]], scope: dict[int, str]
) -> tuple[Query, list[str]]:
    """Query parameters (+ the UIDs of a nested path) → (Query, ignored parameter notes)."""
    ignored: list[str] = []
    keys: list[MatchKey] = [MatchKey.parse(tag, uid) for tag, uid in scope.items()]
    include: set[int] = set()
    include_all = False
    fuzzy = False
    limit: int | None = None
    offset = 0
    for name, value in params:
        lname = name.lower()
        if lname == "includefield":
            for field in (f.strip() for f in value.split(",")):
                if not field:
                    continue
                if field.lower() == "all":
                    include_all = True
                    continue
                tag = parse_tag(field.split(".")[0])
                if tag is None or not _known(tag):
                    ignored.append(f"includefield {field} is not a known attribute")
                else:
                    include.add(tag)
        elif lname == "limit":
            limit = _parse_count(name, value)
        elif lname == "offset":
            offset = _parse_count(name, value)
        elif lname == "fuzzymatching":
            fuzzy = _parse_bool(name, value)
        else:
            path = [parse_tag(p) for p in name.split(".")]
            tags = [t for t in path if t is not None and _known(t)]
            if len(tags) != len(path):
                ignored.append(f"{name} is not a known attribute; it was ignored")
                continue
            if tags[0] in scope:
                if value and value != scope[tags[0]]:
                    # The path already fixes this UID; a different value matches nothing.
                    keys.append(MatchKey.parse(tags[0], value))
                continue
            keys.append(_nested_key(tags, value))
    query = Query(
        level=level,
        keys=tuple(_merge_sequences(keys)),
        include=frozenset(include),
        include_all=include_all,
        fuzzy=fuzzy,
        limit=limit,
        offset=offset,
    )
    return query, ignored


def _value(obj: dict[str, Any], tag: str) -> str | None:
    element = obj.get(tag)
    if not element:
        return None
    values = element.get("Value") or [None]
    return str(values[0]) if values[0] is not None else None


def _retrieve_url(base: str, level: QueryLevel, obj: dict[str, Any]) -> str | None:
    study = _value(obj, "0020000D")
    series = _value(obj, "0020000E")
    instance = _value(obj, "00080018")
    if level is QueryLevel.STUDY and study:
        return study_url(base, study)
    if level is QueryLevel.SERIES and study and series:
        return series_url(base, study, series)
    if level is QueryLevel.IMAGE and study and series and instance:
        return instance_url(base, study, series, instance)
    return None


class QidoService:
    """The QIDO-RS endpoints; one instance per application."""

    def __init__(self, archive: ArchiveService, base_url: BaseUrl) -> None:
        self.archive = archive
        self.base_url = base_url

    async def search_studies(self, request: Request) -> Response:
        return await self._search(request, QueryLevel.STUDY)

    async def search_series(self, request: Request) -> Response:
        return await self._search(request, QueryLevel.SERIES)

    async def search_instances(self, request: Request) -> Response:
        return await self._search(request, QueryLevel.IMAGE)

    async def _search(self, request: Request, level: QueryLevel) -> Response:
        scope: dict[int, str] = {}
        study = request.path_params.get("study")
        series = request.path_params.get("series")
        if study is not None:
            scope[STUDY_UID] = check_uid(study, "StudyInstanceUID")
        if series is not None:
            scope[SERIES_UID] = check_uid(series, "SeriesInstanceUID")
        choice = negotiate_metadata(parse_accept(request.headers.get("accept")))
        query, ignored = build_query(level, list(request.query_params.multi_items()), scope)
        result = await self.archive.search(query)
        for tag in result.unsupported_keys:
            ignored.append(f"matching on {tag:08X} is not supported; it was ignored")
        base = self.base_url(request)
        # The index renders DICOM JSON (PS3.18 F.2) from what it stored: no Dataset per match.
        objects = result.objects
        for obj in objects:
            if RETRIEVE_URL not in obj:
                url = _retrieve_url(base, level, obj)
                if url:
                    obj[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
        headers = {"Warning": warning_header(request, ignored)} if ignored else {}
        if choice.media_type == DICOM_XML:
            # PS3.18 §8.7.4: XML search results are multipart/related, one part per match.
            boundary = new_boundary()
            body = b"".join(part_header(boundary, DICOM_XML) + json_to_xml(o) for o in objects)
            body += f"\r\n--{boundary}--\r\n".encode("ascii")
            media_type = multipart_content_type(DICOM_XML, boundary)
            return Response(body, media_type=media_type, headers=headers)
        return Response(
            json_array_bytes(objects), media_type="application/dicom+json", headers=headers
        )
