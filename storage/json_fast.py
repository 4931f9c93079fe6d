"""DICOM JSON (PS3.18 §F.2) of plain elements straight from their encoded bytes.

pydicom renders an element by converting it first (RawDataElement → DataElement: VR hooks,
value converters, validation, value classes such as ``IS``/``DSfloat``/``UID``) and then
walking the converted value (:meth:`~pydicom.dataelem.DataElement.to_json_dict`). For the
values that make up most of a header — ASCII strings and binary numbers — the result is a
plain function of the VR and the bytes, which :func:`render_raw` computes directly.

It answers ``None`` whenever the result is not plainly determined — person names, AT,
sequences, binary VRs (inline or bulk), non-ASCII or ISO 2022 text, numbers that are not
plain decimal numbers, byte counts that are not a multiple of the value size — and the caller
then renders through pydicom. Everything it does answer is exactly what pydicom's path gives
(tests/storage/test_json_fast.py compares both over pydicom's test corpus and edge cases).
"""

from __future__ import annotations

import re
import struct
from typing import Any

JsonDict = dict[str, Any]

# pydicom 3 value converters (pydicom.values), for ASCII input:
#   AE            decode, split on "\", strip each value
#   AS CS DA DT TM UI (multi_string)
#                 decode, rstrip(" \0") the whole, split on "\"
#   SH LO UC      decode, split on "\", rstrip("\0 ") each (convert_text)
#   ST LT UT      decode, rstrip("\0 ") (convert_single_string), no split
#   UR            decode, rstrip() (whitespace), no split
#   IS            multi_string, int of each (pydicom.valuerep.IS)
#   DS            strip the whole, multi_string, float of each (DSfloat)
_MULTI_STRING = frozenset({"AS", "CS", "DA", "DT", "TM", "UI"})
_SPLIT_RSTRIP_EACH = frozenset({"SH", "LO", "UC"})
_SINGLE = frozenset({"ST", "LT", "UT"})
_NUMBER_FORMATS = {
    "US": ("H", 2),
    "SS": ("h", 2),
    "UL": ("L", 4),
    "SL": ("l", 4),
    "UV": ("Q", 8),
    "SV": ("q", 8),
    "FL": ("f", 4),
    "FD": ("d", 8),
}
FAST_VRS = frozenset(
    {"AE", "UR", "IS", "DS", *_MULTI_STRING, *_SPLIT_RSTRIP_EACH, *_SINGLE, *_NUMBER_FORMATS}
)
"""VRs :func:`render_raw` may answer for; others always go through pydicom."""

# A plain decimal integer / number between optional spaces: exactly the strings for which
# int() / float() agree with pydicom's IS / DSfloat (no "", no "1.0" IS, no nan/inf, no "_").
_IS_VALUE = re.compile(r" *[+-]?[0-9]+ *\Z")
_DS_VALUE = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *\Z")


def _strings(vr: str, text: str) -> list[str] | None:
    if vr in _MULTI_STRING:
        return text.rstrip(" \x00").split("\\")
    if vr in _SPLIT_RSTRIP_EACH:
        return [v.rstrip("\x00 ") for v in text.split("\\")]
    if vr in _SINGLE:
        return [text.rstrip("\x00 ")]
    if vr == "AE":
        return [v.strip() for v in text.split("\\")]
    if vr == "UR":
        return [text.rstrip()]
    return None


_CHARSET_TEXT = frozenset({"SH", "LO", "UC", "ST", "LT", "UT"})
"""Decoded with the Specific Character Set; the other string VRs always with ISO 8859-1."""
PLAIN_CHARSETS = frozenset({None, b"", b"ISO_IR 100", b"ISO_IR 192"})
"""(0008,0005) values (raw, trailing spaces stripped) under which ASCII bytes are ASCII text
to pydicom: the default repertoire, Latin-1, UTF-8."""


def render_raw(vr: str, value: bytes, little_endian: bool, plain_charset: bool) -> JsonDict | None:
    """The DICOM JSON of an element of (resolved, explicit) ``vr`` encoded as ``value``, or
    None when pydicom must decide. ``plain_charset``: the data set's character set is one of
    :data:`PLAIN_CHARSETS`. An empty ``value`` answers None: pydicom renders it (cheaply)."""
    if not value:
        return None
    fmt = _NUMBER_FORMATS.get(vr)
    if fmt is not None:
        code, size = fmt
        count, rest = divmod(len(value), size)
        if rest or not count:
            return None
        numbers = struct.unpack(f"{'<' if little_endian else '>'}{count}{code}", value)
        return {"vr": vr, "Value": list(numbers)}
    if not value.isascii() or b"\x1b" in value or (vr in _CHARSET_TEXT and not plain_charset):
        return None  # character sets, ISO 2022 escapes: pydicom's decoders
    text = value.decode("ascii")
    if vr == "IS":
        items = text.rstrip(" \x00").split("\\")
        if len(items) == 1 and not items[0]:
            return {"vr": vr}
        if not all(_IS_VALUE.match(v) for v in items):
            return None
        return {"vr": vr, "Value": [int(v) for v in items]}
    if vr == "DS":
        items = text.strip().rstrip(" \x00").split("\\")
        if not all(_DS_VALUE.match(v) for v in items):
            return None
        return {"vr": vr, "Value": [float(v) for v in items]}
    strings = _strings(vr, text)
    if strings is None:
        return None
    if len(strings) == 1 and not strings[0]:
        return {"vr": vr}
    return {"vr": vr, "Value": strings}
