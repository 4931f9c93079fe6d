"""Turn matched index rows into result data sets: stored attributes plus computed ones.

Each row carries the attributes JSON of its level and the levels above; the result holds the
level's default return attributes that are present (PS3.18 Tables 10.6.3-3/4/5), every
matching key and included attribute (empty when the entity has no value, as C-FIND requires,
PS3.4 C.2.2.3), the UIDs of the enclosing levels, and the computed attributes (counts,
ModalitiesInStudy, SOPClassesInStudy), computed for the page of rows in grouped queries.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from pydicom.config import IGNORE
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from sqlalchemy import Row, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from conformance import attributes as A
from storage.index.schema import instances, series, studies
from storage.query import Query

_UID_TAGS = {A.STUDY: 0x0020_000D, A.SERIES: 0x0020_000E, A.IMAGE: 0x0008_0018}
# Added by the HTTP layer (RetrieveURL) or by the service layer from its own state.
_NOT_RENDERED = frozenset({A.RETRIEVE_URL, 0x0008_0052})


def _requested(query: Query) -> tuple[list[int], set[int]]:
    """(tags to return in order, tags that must be present even when empty)."""
    level = query.level.value
    forced = {key.tag for key in query.keys} | set(query.include)
    ordered = list(dict.fromkeys([*A.DEFAULT_RETURN[level], *sorted(forced)]))
    return [t for t in ordered if t not in _NOT_RENDERED], forced - _NOT_RENDERED


async def _counts(conn: AsyncConnection, statement: Any, ids: list[int]) -> dict[int, Any]:
    if not ids:
        return {}
    return {int(row[0]): row[1] for row in (await conn.execute(statement)).all()}


async def _study_computed(
    conn: AsyncConnection, ids: list[int], wanted: set[int]
) -> dict[int, dict[int, Any]]:
    out: dict[int, dict[int, Any]] = defaultdict(dict)
    if A.NUMBER_OF_STUDY_RELATED_SERIES in wanted:
        counts = await _counts(
            conn,
            select(series.c.study_pk, func.count(series.c.id))
            .where(series.c.study_pk.in_(ids))
            .group_by(series.c.study_pk),
            ids,
        )
        for pk in ids:
            out[pk][A.NUMBER_OF_STUDY_RELATED_SERIES] = counts.get(pk, 0)
    if A.NUMBER_OF_STUDY_RELATED_INSTANCES in wanted:
        counts = await _counts(
            conn,
            select(series.c.study_pk, func.count(instances.c.id))
            .select_from(instances.join(series, instances.c.series_pk == series.c.id))
            .where(series.c.study_pk.in_(ids))
            .group_by(series.c.study_pk),
            ids,
        )
        for pk in ids:
            out[pk][A.NUMBER_OF_STUDY_RELATED_INSTANCES] = counts.get(pk, 0)
    if A.MODALITIES_IN_STUDY in wanted:
        rows = await conn.execute(
            select(series.c.study_pk, series.c.modality)
            .where(series.c.study_pk.in_(ids), series.c.modality.is_not(None))
            .distinct()
        )
        found: dict[int, set[str]] = defaultdict(set)
        for pk, modality in rows.all():
            found[int(pk)].add(modality)
        for pk in ids:
            out[pk][A.MODALITIES_IN_STUDY] = sorted(found.get(pk, ()))
    if A.SOP_CLASSES_IN_STUDY in wanted:
        rows = await conn.execute(
            select(series.c.study_pk, instances.c.sop_class_uid)
            .select_from(instances.join(series, instances.c.series_pk == series.c.id))
            .where(series.c.study_pk.in_(ids))
            .distinct()
        )
        classes: dict[int, set[str]] = defaultdict(set)
        for pk, uid in rows.all():
            classes[int(pk)].add(uid)
        for pk in ids:
            out[pk][A.SOP_CLASSES_IN_STUDY] = sorted(classes.get(pk, ()))
    return out


async def _series_computed(
    conn: AsyncConnection, ids: list[int], wanted: set[int]
) -> dict[int, dict[int, Any]]:
    out: dict[int, dict[int, Any]] = defaultdict(dict)
    if A.NUMBER_OF_SERIES_RELATED_INSTANCES in wanted:
        counts = await _counts(
            conn,
            select(instances.c.series_pk, func.count(instances.c.id))
            .where(instances.c.series_pk.in_(ids))
            .group_by(instances.c.series_pk),
            ids,
        )
        for pk in ids:
            out[pk][A.NUMBER_OF_SERIES_RELATED_INSTANCES] = counts.get(pk, 0)
    return out


async def _patient_computed(
    conn: AsyncConnection, ids: list[int], wanted: set[int]
) -> dict[int, dict[int, Any]]:
    out: dict[int, dict[int, Any]] = defaultdict(dict)
    source = studies.outerjoin(series, series.c.study_pk == studies.c.id).outerjoin(
        instances, instances.c.series_pk == series.c.id
    )
    columns = {
        A.NUMBER_OF_PATIENT_RELATED_STUDIES: func.count(distinct(studies.c.id)),
        A.NUMBER_OF_PATIENT_RELATED_SERIES: func.count(distinct(series.c.id)),
        A.NUMBER_OF_PATIENT_RELATED_INSTANCES: func.count(instances.c.id),
    }
    needed = [tag for tag in columns if tag in wanted]
    if not needed or not ids:
        return out
    rows = await conn.execute(
        select(studies.c.patient_pk, *(columns[t] for t in needed))
        .select_from(source)
        .where(studies.c.patient_pk.in_(ids))
        .group_by(studies.c.patient_pk)
    )
    by_patient = {int(row[0]): row[1:] for row in rows.all()}
    for pk in ids:
        values = by_patient.get(pk, (0,) * len(needed))
        for tag, value in zip(needed, values, strict=True):
            out[pk][tag] = int(value)
    return out


def element_from_json(tag: int, obj: dict[str, Any]) -> DataElement:
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


async def _nearline(conn: AsyncConnection, level: str, ids: list[int]) -> set[int]:
    """Studies / series of the page with at least one instance on the cold tier."""
    if not ids:
        return set()
    if level == A.SERIES:
        statement = select(instances.c.series_pk).where(
            instances.c.series_pk.in_(ids), instances.c.tier == "cold"
        )
    else:
        statement = (
            select(series.c.study_pk)
            .select_from(instances.join(series, instances.c.series_pk == series.c.id))
            .where(series.c.study_pk.in_(ids), instances.c.tier == "cold")
        )
    return {int(pk) for pk in (await conn.execute(statement.distinct())).scalars()}


def _empty_element(tag: int) -> DataElement | None:
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return None
    if " or " in vr:
        vr = vr.split(" or ")[0]
    return DataElement(tag, vr, [] if vr == "SQ" else None)


def _computed_element(tag: int, value: Any) -> DataElement:
    if tag in (A.MODALITIES_IN_STUDY, A.SOP_CLASSES_IN_STUDY):
        vr = "CS" if tag == A.MODALITIES_IN_STUDY else "UI"
        return DataElement(tag, vr, list(value) if len(value) != 1 else value[0])
    return DataElement(tag, "IS", int(value))


async def render_rows(
    conn: AsyncConnection, query: Query, levels: tuple[str, ...], rows: Sequence[Row[Any]]
) -> list[Dataset]:
    level = query.level.value
    ordered, forced = _requested(query)
    computed_tags = A.COMPUTED[level]
    wanted_computed = set(ordered) & computed_tags
    if query.include_all:
        wanted_computed = set(computed_tags)
    ids = [int(row.id) for row in rows]
    if level == A.STUDY:
        computed = await _study_computed(conn, ids, wanted_computed)
    elif level == A.SERIES:
        computed = await _series_computed(conn, ids, wanted_computed)
    elif level == A.PATIENT:
        computed = await _patient_computed(conn, ids, wanted_computed)
    else:
        computed = {}

    nearline = await _nearline(conn, level, ids) if level in (A.STUDY, A.SERIES) else set()
    results: list[Dataset] = []
    parsed: dict[str, dict[str, Any]] = {}  # rows of one study share its JSON text
    for row in rows:
        stored: dict[str, Any] = {}
        for each in levels:
            text = getattr(row, f"json_{each}")
            level_attrs = parsed.get(text) if each != level else None
            if level_attrs is None:
                level_attrs = json.loads(text)
                if each != level:
                    parsed[text] = level_attrs
            stored.update(level_attrs)
        for each, tag in _UID_TAGS.items():
            if each in levels:
                uid_key = f"{tag:08X}"
                uid = {A.STUDY: "study_uid", A.SERIES: "series_uid", A.IMAGE: "sop_uid"}[each]
                stored[uid_key] = {"vr": "UI", "Value": [getattr(row, uid)]}
        if query.include_all:
            keys = [int(k, 16) for k in stored]
            tags = list(dict.fromkeys([*ordered, *sorted(keys)]))
        else:
            tags = list(ordered)
        for each, tag in _UID_TAGS.items():
            if each in levels and tag not in tags:
                tags.append(tag)
        ds = Dataset()
        for tag in tags:
            obj = stored.get(f"{tag:08X}")
            if obj is not None:
                ds.add(element_from_json(tag, obj))
        for tag, value in computed.get(int(row.id), {}).items():
            ds.add(_computed_element(tag, value))
        if A.INSTANCE_AVAILABILITY in tags and level != A.PATIENT:
            # PS3.3 C.4.23.1.1: NEARLINE = retrievable after a delay (the cold tier).
            cold = row.tier == "cold" if level == A.IMAGE else int(row.id) in nearline
            ds.add(DataElement(A.INSTANCE_AVAILABILITY, "CS", "NEARLINE" if cold else "ONLINE"))
        for tag in forced:
            if tag not in ds and tag not in _NOT_RENDERED:
                empty = _empty_element(tag)
                if empty is not None:
                    ds.add(empty)
        results.append(ds)
    return results
