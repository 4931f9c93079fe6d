"""DICOM JSON Model (PS3.18 Annex F.2): pydicom data sets to JSON, stored metadata to arrays.

Precomputed instance metadata from the archive is served without re-parsing: the objects are
joined into a JSON array and the BulkDataURI placeholder prefix is swapped for the request's
base URL (a byte replace; the prefix cannot occur elsewhere because it is only ever written
as the start of a JSON string value).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset

from storage.archive import BULKDATA_BASE

_PLACEHOLDER = b'"' + BULKDATA_BASE.encode("ascii")

JsonObject = dict[str, Any]


def dataset_to_json(ds: Dataset) -> JsonObject:
    """One data set as a DICOM JSON object (PS3.18 F.2.2); binary values inline (F.2.7)."""
    # A huge threshold keeps binary values inline: search results and STOW responses carry
    # no bulk data worth a URI.
    result: JsonObject = ds.to_json_dict(bulk_data_threshold=1 << 62)
    return result


def datasets_to_json_bytes(datasets: Iterable[Dataset]) -> bytes:
    return json_array_bytes(dataset_to_json(ds) for ds in datasets)


def json_array_bytes(objects: Iterable[JsonObject]) -> bytes:
    return json.dumps(list(objects), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def join_metadata(items: Iterable[bytes], base_url: str) -> bytes:
    """Precomputed metadata objects → one JSON array with absolute BulkDataURIs."""
    body = b"[" + b",".join(items) + b"]"
    return body.replace(_PLACEHOLDER, b'"' + base_url.encode("utf-8"))
