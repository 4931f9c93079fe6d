"""A REST API for Modality Worklist items: ``{dicomweb_root}/worklist``.

Not a DICOM standard service (UPS-RS, PS3.18 §11, comes later on the same store); it is how
an operator or an order feed schedules the procedure steps that modalities then fetch with
Modality Worklist C-FIND. Bodies are DICOM JSON (PS3.18 F.2), one object per item, whose
ScheduledProcedureStepSequence (0040,0100) holds exactly one step.

=========================================  ==================================================
``POST   {root}/worklist``                 create; body ``application/dicom+json`` (one
                                           object, or an array of exactly one); 201, the item,
                                           ``Location: {root}/worklist/{id}``
``GET    {root}/worklist``                 search; QIDO-style query parameters
                                           (``PatientName=DOE*``,
                                           ``00400100.00080060=CT``,
                                           ``ScheduledProcedureStepSequence.ScheduledProcedureStepStartDate=20240101-20240131``),
                                           ``limit``, ``offset``, ``includecanceled=true``;
                                           200 with a JSON array (empty when nothing matches)
``GET    {root}/worklist/{id}``            one item; 404 when unknown
``PUT    {root}/worklist/{id}``            replace the item's attributes; 200; 409 when the
                                           item is cancelled
``DELETE {root}/worklist/{id}``,           cancel: ProcedureStepState becomes ``CANCELED``;
``POST   {root}/worklist/{id}/cancel``     the item stays readable here but no longer matches
                                           worklist C-FIND or searches without
                                           ``includecanceled=true``; 200 with the item
=========================================  ==================================================

Every item returned carries, besides its stored attributes, the item id as SOPInstanceUID
(0008,0018) and its state as ProcedureStepState (0074,1000), as a UPS workitem would. Bad
input answers 400 (415 for a non-JSON body, 413 beyond 1 MiB) with ``{"error": ...}`` saying
what is wrong; nothing is stored then.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataset import Dataset
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from config.settings import Settings
from dicomweb.dicom_json import dataset_to_json, json_array_bytes
from dicomweb.errors import HttpError, check_uid, translated
from dicomweb.qido import build_query
from dicomweb.urls import base_url_of, warning_header
from storage.query import QueryLevel
from storage.worklist import (
    InvalidWorklistItem,
    WorklistItem,
    WorklistItemCanceled,
    WorklistStore,
    validate_item,
)

DICOM_JSON = "application/dicom+json"
MAX_BODY_BYTES = 1 << 20
_CONTROL = {"includecanceled"}


class WorklistService:
    def __init__(self, store: WorklistStore, root: str) -> None:
        self._store = store
        self._root = root

    async def create(self, request: Request) -> Response:
        dataset = await _read_item(request)
        try:
            item = await self._store.create(dataset)
        except InvalidWorklistItem as exc:
            raise HttpError(400, str(exc)) from None
        location = f"{base_url_of(request, self._root)}/worklist/{item.id}"
        return _item_response(item, 201, {"Location": location})

    async def search(self, request: Request) -> Response:
        params = list(request.query_params.multi_items())
        include_canceled = False
        for name, value in params:
            if name.lower() == "includecanceled":
                if value.lower() not in ("true", "false", "1", "0", ""):
                    raise HttpError(400, f"includecanceled={value!r}: expected true or false")
                include_canceled = value.lower() in ("true", "1")
        query, ignored = build_query(
            QueryLevel.STUDY, [(n, v) for n, v in params if n.lower() not in _CONTROL], {}
        )
        result = await self._store.search(
            query.keys,
            include_canceled=include_canceled,
            limit=query.limit,
            offset=query.offset,
        )
        for tag in result.unsupported_keys:
            ignored.append(f"matching on {tag:08X} is not supported; it was ignored")
        headers = {"Warning": warning_header(request, ignored)} if ignored else None
        body = json_array_bytes(_item_json(item) for item in result.items)
        return Response(body, 200, headers=headers, media_type=DICOM_JSON)

    async def get(self, request: Request) -> Response:
        item = await self._store.get(_item_id(request))
        return _item_response(item, 200)

    async def replace(self, request: Request) -> Response:
        item_id = _item_id(request)
        dataset = await _read_item(request)
        try:
            item = await self._store.update(item_id, dataset)
        except InvalidWorklistItem as exc:
            raise HttpError(400, str(exc)) from None
        except WorklistItemCanceled as exc:
            raise HttpError(409, str(exc)) from None
        return _item_response(item, 200)

    async def cancel(self, request: Request) -> Response:
        item = await self._store.cancel(_item_id(request))
        return _item_response(item, 200)


def build_worklist_routes(store: WorklistStore, settings: Settings) -> list[Route]:
    """The worklist REST routes under ``settings.http.dicomweb_root``."""
    root = settings.http.dicomweb_root.rstrip("/")
    service = WorklistService(store, root)
    collection = f"{root}/worklist"
    item = f"{collection}/{{item_id}}"
    return [
        Route(collection, translated(service.create), methods=["POST"], name="worklist_create"),
        Route(collection, translated(service.search), methods=["GET"], name="worklist_search"),
        Route(item, translated(service.get), methods=["GET"], name="worklist_get"),
        Route(item, translated(service.replace), methods=["PUT"], name="worklist_replace"),
        Route(item, translated(service.cancel), methods=["DELETE"], name="worklist_delete"),
        Route(
            f"{item}/cancel", translated(service.cancel), methods=["POST"], name="worklist_cancel"
        ),
    ]


def _item_id(request: Request) -> str:
    return check_uid(str(request.path_params["item_id"]), "worklist item id")


async def _read_item(request: Request) -> Dataset:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in (DICOM_JSON, "application/json"):
        raise HttpError(415, f"the body must be {DICOM_JSON}, not {media_type or 'untyped'}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HttpError(413, f"a worklist item must be at most {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HttpError(413, f"a worklist item must be at most {MAX_BODY_BYTES} bytes")
    try:
        parsed: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HttpError(400, f"the body is not JSON: {exc}") from None
    if isinstance(parsed, list):
        if len(parsed) != 1:
            raise HttpError(400, f"expected one DICOM JSON object, got an array of {len(parsed)}")
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        raise HttpError(400, "expected a DICOM JSON object (PS3.18 F.2)")
    _check_json_attributes(parsed, "")
    try:
        dataset = Dataset.from_json(parsed)
        # from_json is lazy about some values; touching every element surfaces bad ones now.
        for elem in dataset.iterall():
            _ = elem.value
    except Exception as exc:  # pydicom raises ValueError, KeyError, TypeError, ...
        raise HttpError(400, f"not a valid DICOM JSON object: {exc}") from None
    try:
        validate_item(dataset)
    except InvalidWorklistItem as exc:
        raise HttpError(400, str(exc)) from None
    return dataset


_VRS = frozenset(
    {
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "PN",
        "SH",
        "SL",
        "SQ",
        "SS",
        "ST",
        "SV",
        "TM",
        "UC",
        "UI",
        "UL",
        "UN",
        "UR",
        "US",
        "UT",
        "UV",
    }
)


def _check_json_attributes(obj: dict[str, Any], where: str) -> None:
    """PS3.18 F.2.2/F.2.3: keys are 8 hex digits, each attribute names a valid VR."""
    for key, attribute in obj.items():
        path = f"{where}{key}"
        if len(key) != 8 or any(c not in "0123456789abcdefABCDEF" for c in key):
            raise HttpError(400, f"not a valid DICOM JSON object: {path!r} is not a tag")
        if not isinstance(attribute, dict) or attribute.get("vr") not in _VRS:
            raise HttpError(400, f"not a valid DICOM JSON object: {path} has no valid vr")
        if attribute["vr"] == "SQ":
            for index, sub in enumerate(attribute.get("Value") or []):
                if not isinstance(sub, dict):
                    raise HttpError(400, f"not a valid DICOM JSON object: {path} item {index}")
                _check_json_attributes(sub, f"{path}[{index}].")


def _item_json(item: WorklistItem) -> dict[str, Any]:
    ds = Dataset()
    ds.update(item.dataset)
    ds.SOPInstanceUID = item.id
    ds.ProcedureStepState = item.status.value
    return dataset_to_json(ds)


def _item_response(
    item: WorklistItem, status: int, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(_item_json(item), ensure_ascii=False).encode("utf-8")
    return Response(body, status, headers=headers, media_type=DICOM_JSON)
