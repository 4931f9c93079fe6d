"""C-FIND / C-MOVE / C-GET identifiers <-> the storage query model (PS3.4 C.4.1.1.3).

A request identifier becomes a :class:`storage.query.Query` through
:meth:`storage.query.MatchKey.parse`, the same parser QIDO-RS uses, so DIMSE and DICOMweb
match identically; this module only reads values out of pydicom elements and writes the
matched attributes back into response identifiers.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from storage.errors import InvalidQuery
from storage.query import MatchKey, Query, QueryLevel

QUERY_RETRIEVE_LEVEL = 0x0008_0052
SPECIFIC_CHARACTER_SET = 0x0008_0005
RETRIEVE_AE_TITLE = 0x0008_0054
# Not matching keys: they describe the request itself (PS3.4 C.4.1.1.3.1).
_NOT_KEYS = frozenset({QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET, RETRIEVE_AE_TITLE})


def element_text(elem: DataElement) -> str:
    """An element's value as the text form MatchKey.parse expects (backslash-separated)."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def match_keys(identifier: Dataset, *, skip: Iterable[int] = ()) -> tuple[MatchKey, ...]:
    """Every attribute of ``identifier`` as a matching key (universal when empty)."""
    skipped = _NOT_KEYS | set(skip)
    keys: list[MatchKey] = []
    for elem in identifier:
        tag = int(elem.tag)
        if tag in skipped or elem.tag.group in (0x0000, 0x0002) or elem.tag.is_private:
            continue
        keys.append(element_key(elem))
    return tuple(keys)


def element_key(elem: DataElement) -> MatchKey:
    tag = int(elem.tag)
    if elem.VR == "SQ":
        items = elem.value or []
        # PS3.4 C.2.2.2.6: a sequence key holds at most one item of sub-keys.
        if len(items) > 1:
            raise InvalidQuery(f"sequence key {elem.keyword or tag} has more than one item")
        return MatchKey.sequence(tag, match_keys(items[0]) if items else ())
    return MatchKey.parse(tag, element_text(elem), vr=str(elem.VR))


def level_of(identifier: Dataset, allowed: Iterable[QueryLevel]) -> QueryLevel:
    """The identifier's QueryRetrieveLevel (0008,0052), checked against the model's levels."""
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    allowed = tuple(allowed)
    for level in allowed:
        if level.value == raw:
            return level
    names = ", ".join(level.value for level in allowed)
    raise InvalidQuery(f"QueryRetrieveLevel {raw!r} is not one of {names}")


def query_for(identifier: Dataset, level: QueryLevel, *, patient_root: bool) -> Query:
    keys = match_keys(identifier)
    return Query(
        level=level,
        keys=keys,
        include=frozenset(k.tag for k in keys),
        patient_root=patient_root,
    )


def response_identifier(
    request: Dataset, match: Dataset, level: QueryLevel, retrieve_ae_title: str | None
) -> Dataset:
    """The attributes the request asked for, valued from ``match`` (PS3.4 C.4.1.1.3.2)."""
    response = Dataset()
    if SPECIFIC_CHARACTER_SET in match:
        response[SPECIFIC_CHARACTER_SET] = match[SPECIFIC_CHARACTER_SET]
    for elem in request:
        tag = int(elem.tag)
        if tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL) or elem.tag.group in (0, 2):
            continue
        if tag == RETRIEVE_AE_TITLE and retrieve_ae_title:
            response.RetrieveAETitle = retrieve_ae_title
        elif tag in match:
            response[tag] = match[tag]
        elif elem.VR == "SQ":
            response[tag] = DataElement(tag, "SQ", Sequence())
        else:
            response[tag] = DataElement(tag, elem.VR, None)
    response.QueryRetrieveLevel = level.value
    return response
