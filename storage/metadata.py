"""The precomputed DICOM JSON metadata of an instance (PS3.18 §F.2), made once at ingest.

Binary values (VR OB, OD, OF, OL, OV, OW, UN) longer than the bulk data threshold, and Pixel
Data always, become ``{"vr": .., "BulkDataURI": ..}``. The URI is
``arca-base:/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path}`` where ``path``
locates the element by tags and item indexes, slash-separated, tags as 8 upper-case hex
digits and item indexes zero-based decimal::

    7FE00010                       Pixel Data at the top level
    00540016/0/00181072            (0018,1072) in item 0 of (0054,0016)
    52009230/3/00289110/0/00280030 nested deeper

Deferred values (larger than the parser's ``defer_size``) are never loaded to decide: the raw
element's length is enough, so a 2 GB multi-frame object costs no more than its header.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from conformance.attributes import IMAGE, PATIENT, SERIES, SHARED_TAGS, STUDY, level_of_tag
from storage.json_fast import FAST_VRS, render_raw

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_DATA_TAGS = frozenset({0x7FE0_0008, 0x7FE0_0009, 0x7FE0_0010})
UNDEFINED_LENGTH = 0xFFFF_FFFF

JsonDict = dict[str, Any]


def bulkdata_uri(base: str, study: str, series: str, sop: str, path: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{sop}/bulkdata/{path}"


def _vr_of_raw(ds: Dataset, raw: RawDataElement) -> str:
    vr = raw.VR
    if not vr:
        try:
            vr = str(dictionary_VR(raw.tag))
        except KeyError:
            vr = "UN"
    if " or " in vr:
        # Ambiguous dictionary VRs (PS3.5 §A.1): in Implicit VR Little Endian, Pixel Data
        # (and other OB-or-OW data) is OW; with explicit VR the file says which, but a
        # defined length for encapsulated pixel data cannot happen, so undefined → OB.
        if raw.length == UNDEFINED_LENGTH:
            return "OB"
        if raw.is_implicit_VR:
            return "OW"
        bits = ds.get(0x0028_0100)
        if bits is not None and bits.value is not None and int(bits.value) <= 8:
            return "OB"
        return "OW"
    return str(vr)


_MEMO_LIMIT = 20_000
_memo: dict[tuple[Any, ...], JsonDict] = {}
"""DICOM JSON of plain elements by everything their JSON depends on (tag, VR as read, byte
order, the raw bytes, the character set, the threshold). The instances of a series repeat
most of their header byte for byte (patient, study, series, equipment, image geometry), so
most elements are rendered once per series instead of once per instance. Entries are
shared: never mutated. Elements whose rendering depends on other elements (an ambiguous or
unknown VR, private tags read without a VR, bulk data) are never memoized."""

SPECIFIC_CHARACTER_SET = 0x0008_0005
_LUT_DESCRIPTOR_TAGS = frozenset({0x0028_1101, 0x0028_1102, 0x0028_1103, 0x0028_3002})
"""pydicom adjusts their first value after conversion (pydicom.hooks.raw_element_value)."""
_PLAIN_CHARSET_KEYS = frozenset({None, ("raw", b"ISO_IR 100"), ("raw", b"ISO_IR 192")})


def _memo_key(
    tag: int, raw: RawDataElement, charset: Any, threshold: int
) -> tuple[Any, ...] | None:
    vr = raw.VR
    if raw.value is None or vr in ("SQ", "UN") or tag in PIXEL_DATA_TAGS:
        return None
    if vr is None:
        if tag >> 16 & 1:
            return None  # a private tag's VR depends on its creator
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            return None
        if " or " in vr or vr in ("SQ", "UN"):
            return None  # resolved from other elements (PS3.5 §A.1)
    return (tag, vr, raw.is_little_endian, raw.value, charset, threshold)


def _charset_key(ds: Dataset, own: Any) -> Any:
    """What identifies the character set ``ds`` declares in ``own``, its (0008,0005): the
    raw bytes while unconverted, else pydicom's encodings."""
    if isinstance(own, RawDataElement) and own.value is not None:
        return ("raw", bytes(own.value).rstrip(b" \x00"))
    encodings = ds._character_set
    return tuple(encodings) if isinstance(encodings, list) else encodings


def dataset_to_json(
    ds: Dataset, *, threshold: int, uri_prefix: str, path: tuple[str, ...] = ()
) -> JsonDict:
    """DICOM JSON of ``ds`` with BulkDataURIs ``uri_prefix + "/" + path``."""
    bulk: list[JsonDict] = []
    out = _render(ds, threshold, path, None, bulk)
    for element in bulk:
        element["BulkDataURI"] = f"{uri_prefix}/{element['BulkDataURI']}"
    return out


def _render(
    ds: Dataset, threshold: int, path: tuple[str, ...], charset: Any, bulk: list[JsonDict]
) -> JsonDict:
    """:func:`dataset_to_json` without the URI prefix: each bulk data element's
    ``BulkDataURI`` holds its path and is appended to ``bulk``. ``charset``: the key of the
    character set inherited from the enclosing data set (None: the default repertoire).

    Plain elements come from the memo, or from their bytes (storage.json_fast), or else
    from pydicom's conversion; sequences recurse."""
    out: JsonDict = {}
    # Int keys: sorting and looking up pydicom's BaseTag keys runs Python-level comparisons.
    elements: dict[int, Any] = dict(zip(map(int, ds._dict), ds._dict.values(), strict=True))
    own = elements.get(SPECIFIC_CHARACTER_SET)
    if own is not None:
        charset = _charset_key(ds, own)
    plain = charset in _PLAIN_CHARSET_KEYS
    for tag in sorted(elements):
        if tag & 0xFFFF == 0 or tag >> 16 == 0x0002:
            continue  # group lengths (retired, PS3.5 §7.2) and File Meta are not data set content
        key = f"{tag:08X}"
        item = elements[tag]
        memo_key = None
        if isinstance(item, RawDataElement):
            if item.value is None and item.length:
                vr = _vr_of_raw(ds, item)
                if vr in BINARY_VRS:
                    bulk.append(entry := {"vr": vr, "BulkDataURI": "/".join((*path, key))})
                    out[key] = entry
                    continue
            memo_key = _memo_key(tag, item, charset, threshold)
            if memo_key is not None:
                known = _memo.get(memo_key)
                value = item.value
                if (
                    known is None
                    and value is not None
                    and memo_key[1] in FAST_VRS
                    and tag not in _LUT_DESCRIPTOR_TAGS
                ):
                    known = render_raw(memo_key[1], value, item.is_little_endian, plain)
                    if known is not None:
                        _remember(memo_key, known)
                if known is not None:
                    out[key] = known
                    continue
        elem: DataElement = ds[tag]
        vr = elem.VR
        if vr == "SQ":
            items = [
                _render(child, threshold, (*path, key, str(i)), charset, bulk)
                for i, child in enumerate(elem.value or [])
            ]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        if vr in BINARY_VRS and elem.value is not None:
            length = len(elem.value) if not elem.is_empty else 0
            if tag in PIXEL_DATA_TAGS or length > threshold:
                bulk.append(entry := {"vr": vr, "BulkDataURI": "/".join((*path, key))})
                out[key] = entry
                continue
        rendered = out[key] = elem.to_json_dict(None, threshold + 1)
        if memo_key is not None:
            _remember(memo_key, rendered)
    return out


def _remember(memo_key: tuple[Any, ...], rendered: JsonDict) -> None:
    if len(_memo) >= _MEMO_LIMIT:
        _memo.clear()
    _memo[memo_key] = rendered


def instance_json(
    ds: Dataset, *, threshold: int, base: str, study: str, series: str, sop: str
) -> JsonDict:
    prefix = bulkdata_uri(base, study, series, sop, "").rstrip("/")
    return dataset_to_json(ds, threshold=threshold, uri_prefix=prefix)


def render_unprefixed(ds: Dataset, *, threshold: int) -> tuple[JsonDict, list[JsonDict]]:
    """:func:`instance_json` before the instance's UIDs are known: the JSON, and its bulk
    data elements, whose ``BulkDataURI`` holds only the path until :func:`prefix_bulkdata`."""
    bulk: list[JsonDict] = []
    return _render(ds, threshold, (), None, bulk), bulk


def prefix_bulkdata(bulk: list[JsonDict], *, base: str, study: str, series: str, sop: str) -> None:
    """Complete the URIs of :func:`render_unprefixed` as :func:`instance_json` makes them."""
    prefix = bulkdata_uri(base, study, series, sop, "").rstrip("/")
    for element in bulk:
        element["BulkDataURI"] = f"{prefix}/{element['BulkDataURI']}"


def split_levels(meta: JsonDict) -> dict[str, JsonDict]:
    """The attributes of each hierarchy level (PATIENT, STUDY, SERIES, IMAGE) from one
    instance's JSON. Bulk data stays out of the instance level's (search-time) attributes."""
    levels: dict[str, JsonDict] = {PATIENT: {}, STUDY: {}, SERIES: {}, IMAGE: {}}
    for key, value in meta.items():
        tag = int(key, 16)
        if "BulkDataURI" in value:
            continue
        if tag in SHARED_TAGS:
            for level_attrs in levels.values():
                level_attrs[key] = value
            continue
        level = level_of_tag(tag)
        levels[level][key] = value
        if level == PATIENT:
            # Each study keeps the patient attributes it arrived with (Study Root view).
            levels[STUDY][key] = value
    return levels


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def parse_bulkdata_path(path: str) -> list[tuple[int, int | None]]:
    """Validate a bulk data path: [(tag, item index or None for the last step), ...]."""
    parts = path.strip("/").split("/")
    if len(parts) % 2 != 1:
        raise ValueError(f"bad bulk data path {path!r}")
    steps: list[tuple[int, int | None]] = []
    for i in range(0, len(parts), 2):
        tag_text = parts[i]
        if len(tag_text) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag_text):
            raise ValueError(f"bad tag {tag_text!r} in bulk data path")
        index: int | None = None
        if i + 1 < len(parts):
            if not parts[i + 1].isdigit():
                raise ValueError(f"bad item index {parts[i + 1]!r} in bulk data path")
            index = int(parts[i + 1])
        steps.append((int(tag_text, 16), index))
    return steps


def resolve_bulkdata(ds: Dataset, path: str) -> bytes:
    """The bytes of the element ``path`` names in ``ds`` (KeyError when there is none)."""
    try:
        steps = parse_bulkdata_path(path)
    except ValueError as exc:
        raise KeyError(str(exc)) from exc
    current: Dataset = ds
    for tag, index in steps:
        if tag not in current:
            raise KeyError(f"no element {tag:08X}")
        elem = current[tag]
        if index is None:
            if elem.VR not in BINARY_VRS or elem.value is None:
                raise KeyError(f"{tag:08X} is not bulk data")
            return bytes(elem.value)
        items = elem.value if elem.VR == "SQ" else None
        if not items or index >= len(items):
            raise KeyError(f"no item {index} in {tag:08X}")
        current = items[index]
    raise KeyError("empty bulk data path")
