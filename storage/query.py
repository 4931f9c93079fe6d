"""The one query model behind QIDO-RS, C-FIND and Modality Worklist.

A request (QIDO query parameters, a C-FIND identifier) is parsed into a :class:`Query`: the
level, the matching keys each with its DICOM matching kind (PS3.4 C.2.2.2), what to return,
and paging. The index compiles a Query to SQL (:mod:`storage.index.compile`); nothing else
interprets matching semantics, so QIDO and C-FIND cannot drift apart.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.config import IGNORE
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset

from storage.errors import InvalidQuery

# VRs for which '*' and '?' are wildcards (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
# VRs matched by range (PS3.4 C.2.2.2.5).
RANGE_VRS = frozenset({"DA", "TM", "DT"})


class QueryLevel(enum.Enum):
    """QueryRetrieveLevel (0008,0052) values; IMAGE is QIDO's 'instances'."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class MatchKind(enum.Enum):
    UNIVERSAL = "universal"
    """Empty value (or a lone '*'): no constraint, but return the attribute (C.2.2.2.3)."""
    SINGLE_VALUE = "single"
    """Exact match; case-insensitive for PN (C.2.2.2.1)."""
    WILDCARD = "wildcard"
    """'*' any run, '?' one character (C.2.2.2.4)."""
    RANGE = "range"
    """Inclusive lower/upper bound, either may be open (C.2.2.2.5)."""
    UID_LIST = "uid_list"
    """Any of several UIDs (C.2.2.2.2)."""
    SEQUENCE = "sequence"
    """An item of sub-keys, all of which one item of the stored sequence must match (C.2.2.2.6)."""


@dataclass(frozen=True)
class MatchKey:
    """One matching key: an attribute tag and how it must match."""

    tag: int
    vr: str
    kind: MatchKind
    value: str | None = None
    """SINGLE_VALUE and WILDCARD: the value as given (wildcards kept)."""
    lower: str | None = None
    """RANGE: inclusive lower bound, None = open."""
    upper: str | None = None
    """RANGE: inclusive upper bound, None = open."""
    uids: tuple[str, ...] = ()
    """UID_LIST: the UIDs, any of which matches."""
    items: tuple[MatchKey, ...] = ()
    """SEQUENCE: the sub-keys of the one query item."""

    @property
    def keyword(self) -> str:
        from pydicom.datadict import keyword_for_tag

        return keyword_for_tag(self.tag) or f"{self.tag:08X}"

    @classmethod
    def parse(cls, tag: int, value: str, *, vr: str | None = None) -> MatchKey:
        """Build a key from its textual value, choosing the matching kind from the VR.

        ``value`` is the attribute value as a QIDO parameter or a C-FIND identifier carries
        it: backslash (or, in QIDO, comma) separates UIDs; '-' marks a date/time range.
        """
        vr = vr or _vr_of(tag)
        raw = value.strip() if vr != "PN" else value.strip(" ")
        if raw in ("", "*"):
            return cls(tag, vr, MatchKind.UNIVERSAL)
        if vr == "SQ":
            raise InvalidQuery(f"sequence key {tag:08X} needs sub-keys, not a value")
        if vr == "UI":
            uids = tuple(u.strip() for u in raw.replace(",", "\\").split("\\") if u.strip())
            for uid in uids:
                _check_uid(uid)
            if len(uids) == 1:
                return cls(tag, vr, MatchKind.SINGLE_VALUE, value=uids[0])
            return cls(tag, vr, MatchKind.UID_LIST, uids=uids)
        if vr in RANGE_VRS and "-" in raw and not (vr == "DT" and _looks_like_offset(raw)):
            low_text, _, high_text = raw.partition("-")
            lower, upper = low_text.strip() or None, high_text.strip() or None
            if lower is None and upper is None:
                raise InvalidQuery(f"range for {tag:08X} has neither bound: {value!r}")
            for bound in (lower, upper):
                if bound is not None:
                    _check_temporal(vr, bound, tag)
            return cls(tag, vr, MatchKind.RANGE, lower=lower, upper=upper)
        if vr in RANGE_VRS:
            _check_temporal(vr, raw, tag)
            return cls(tag, vr, MatchKind.SINGLE_VALUE, value=raw)
        if vr in WILDCARD_VRS and ("*" in raw or "?" in raw):
            return cls(tag, vr, MatchKind.WILDCARD, value=raw)
        return cls(tag, vr, MatchKind.SINGLE_VALUE, value=raw)

    @classmethod
    def sequence(cls, tag: int, items: tuple[MatchKey, ...]) -> MatchKey:
        if not items:
            return cls(tag, "SQ", MatchKind.UNIVERSAL)
        return cls(tag, "SQ", MatchKind.SEQUENCE, items=items)


@dataclass(frozen=True)
class Query:
    """A search at one level: keys to match, attributes to return, paging."""

    level: QueryLevel
    keys: tuple[MatchKey, ...] = ()
    """Matching keys, including the scoping UIDs of nested QIDO paths / C-FIND identifiers."""
    include: frozenset[int] = frozenset()
    """Extra attribute tags to return besides the level's defaults (QIDO includefield)."""
    include_all: bool = False
    """QIDO ``includefield=all``: every attribute stored for the level."""
    fuzzy: bool = False
    """QIDO ``fuzzymatching=true``: PN keys also match name components by prefix,
    case- and accent-insensitively."""
    limit: int | None = None
    offset: int = 0
    patient_root: bool = False
    """C-FIND Patient Root model: PATIENT level exists and study level is under a patient."""

    def key(self, tag: int) -> MatchKey | None:
        for k in self.keys:
            if k.tag == tag:
                return k
        return None


JsonObject = dict[str, Any]
"""One data set in the DICOM JSON Model (PS3.18 F.2): tag (8 hex digits) → element."""


class QueryResult:
    """Matched entities in order (paged), each with the attributes to return.

    The index renders them as DICOM JSON objects (``objects``), which QIDO-RS serves as they
    are; ``matches`` are the same as pydicom Datasets (C-FIND), made on first use. A result
    built from Datasets (``QueryResult(matches=...)``) gives its JSON the same way."""

    def __init__(
        self,
        matches: Sequence[Dataset] | None = None,
        unsupported_keys: tuple[int, ...] = (),
        *,
        objects: Sequence[JsonObject] | None = None,
    ) -> None:
        self._matches = list(matches) if matches is not None else None
        self._objects = list(objects) if objects is not None else None
        self.unsupported_keys = unsupported_keys
        """Keys the index cannot match on; they were ignored (QIDO answers Warning: 299)."""

    @property
    def objects(self) -> list[JsonObject]:
        if self._objects is None:
            # A huge threshold keeps binary values inline: results carry no bulk data.
            self._objects = [
                ds.to_json_dict(bulk_data_threshold=1 << 62) for ds in self._matches or ()
            ]
        return self._objects

    @property
    def matches(self) -> list[Dataset]:
        if self._matches is None:
            self._matches = [dataset_from_json(obj) for obj in self._objects or ()]
        return self._matches


def dataset_from_json(obj: JsonObject) -> Dataset:
    ds = Dataset()
    for key, element in obj.items():
        ds.add(element_from_json(int(key, 16), element))
    return ds


def element_from_json(tag: int, obj: JsonObject) -> DataElement:
    """A DataElement from its DICOM JSON (PS3.18 F.2), fast for the common value types.

    The values were validated when the object was ingested, so they are not validated again
    (pydicom's per-element validation dominated the cost of large result sets). Sequences,
    binary values and AT fall back to pydicom's own converter.
    """
    vr = obj.get("vr", "UN")
    if vr in ("SQ", "AT") or "InlineBinary" in obj or "BulkDataURI" in obj:
        return Dataset.from_json({f"{tag:08X}": obj})[tag]
    values = obj.get("Value")
    if not values:
        return DataElement(tag, vr, empty_value_for_VR(vr), validation_mode=IGNORE)
    if vr == "PN":
        values = [_person_name(v) for v in values]
    value = values[0] if len(values) == 1 else values
    return DataElement(tag, vr, value, validation_mode=IGNORE)


def _person_name(value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)
    groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
    return "=".join(groups).rstrip("=")


def _vr_of(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        raise InvalidQuery(f"unknown attribute {tag:08X}") from None


def _check_uid(uid: str) -> None:
    if len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid) or not uid:
        raise InvalidQuery(f"not a valid UID: {uid!r}")


def _looks_like_offset(raw: str) -> bool:
    # A DT value may carry a UTC offset like 20200101120000-0500; a range has '-' with a
    # full DT (or nothing) on each side. Treat 'YYYYMMDDhhmmss-HHMM' as a single value.
    head, _, tail = raw.rpartition("-")
    return len(tail) == 4 and tail.isdigit() and len(head) >= 8 and "-" not in head


def _check_temporal(vr: str, value: str, tag: int) -> None:
    core = value.split("+")[0].split("-")[0] if vr == "DT" else value
    digits = core.replace(".", "").replace(":", "")
    ok = digits.isdigit() and (
        (vr == "DA" and len(core) == 8)
        or (vr == "TM" and 2 <= len(core.split(".")[0].replace(":", "")) <= 6)
        or (vr == "DT" and 4 <= len(core.split(".")[0]) <= 14)
    )
    if not ok:
        raise InvalidQuery(f"{value!r} is not a valid {vr} value for {tag:08X}")
