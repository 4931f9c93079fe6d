"""Turn matched index rows into results: DICOM JSON straight from the stored attributes.

Each row of the compiled statement (:mod:`storage.index.compile`) carries the attributes JSON
of its level and the levels above, the UIDs, and the computed attributes of that row (counts,
ModalitiesInStudy, whether something is on the cold tier). A result holds the level's default
return attributes that are present (PS3.18 Tables 10.6.3-3/4/5), every matching key and
included attribute (empty when the entity has no value, as C-FIND requires, PS3.4 C.2.2.3),
the UIDs of the enclosing levels and the computed attributes.

Results are built as DICOM JSON objects (PS3.18 F.2) from the stored JSON elements, without
a pydicom Dataset per row: the stored elements were written by pydicom at ingest and are
passed through unchanged. C-FIND turns them into Datasets (:class:`storage.query.QueryResult`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncConnection

from conformance import attributes as A
from storage.index.compile import (
    NEARLINE,
    NOT_RENDERED,
    compile_query,
    computed_column,
    requested,
    wanted_computed,
)
from storage.index.schema import instances, series
from storage.query import JsonObject, Query, QueryResult

_UID_COLUMNS = {A.STUDY: "study_uid", A.SERIES: "series_uid", A.IMAGE: "sop_uid"}
_UID_KEYS = {A.STUDY: "0020000D", A.SERIES: "0020000E", A.IMAGE: "00080018"}
_MULTI_VALUED = (A.MODALITIES_IN_STUDY, A.SOP_CLASSES_IN_STUDY)


async def search(conn: AsyncConnection, query: Query) -> QueryResult:
    """Match ``query`` and render one page of results: one SELECT (two with
    SOPClassesInStudy)."""
    compiled = compile_query(query)
    rows = (await conn.execute(compiled.statement)).all()
    objects = await render_objects(conn, query, compiled.levels, rows)
    return QueryResult(objects=objects, unsupported_keys=tuple(dict.fromkeys(compiled.unsupported)))


async def render_rows(
    conn: AsyncConnection, query: Query, levels: tuple[str, ...], rows: Sequence[Row[Any]]
) -> list[Dataset]:
    """The rows as pydicom Datasets (for callers that need them)."""
    return QueryResult(objects=await render_objects(conn, query, levels, rows)).matches


async def _sop_classes_in_study(conn: AsyncConnection, ids: list[int]) -> dict[int, list[str]]:
    if not ids:
        return {}
    rows = await conn.execute(
        select(series.c.study_pk, instances.c.sop_class_uid)
        .select_from(instances.join(series, instances.c.series_pk == series.c.id))
        .where(series.c.study_pk.in_(ids))
        .distinct()
    )
    classes: dict[int, set[str]] = defaultdict(set)
    for pk, uid in rows.all():
        classes[int(pk)].add(uid)
    return {pk: sorted(classes.get(pk, ())) for pk in ids}


def _empty(tag: int) -> JsonObject | None:
    """The DICOM JSON of an empty element (PS3.18 F.2.5); None for an unknown tag."""
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return None
    vr = vr.split(" or ")[0]
    return {"vr": "SQ", "Value": []} if vr == "SQ" else {"vr": vr}


def _computed(tag: int, value: Any) -> JsonObject:
    if tag in _MULTI_VALUED:
        vr = "CS" if tag == A.MODALITIES_IN_STUDY else "UI"
        if isinstance(value, str):  # aggregated by the database, '\' separated
            value = sorted({v for v in value.split("\\") if v})
        values = list(value or ())
        return {"vr": vr, "Value": values} if values else {"vr": vr}
    return {"vr": "IS", "Value": [int(value or 0)]}


async def render_objects(
    conn: AsyncConnection, query: Query, levels: tuple[str, ...], rows: Sequence[Row[Any]]
) -> list[JsonObject]:
    if not rows:
        return []
    level = query.level.value
    ordered, forced = requested(query)
    computed_tags, availability = wanted_computed(query)
    extra: dict[int, dict[int, Any]] = {}
    if level == A.STUDY and A.SOP_CLASSES_IN_STUDY in computed_tags:
        classes = await _sop_classes_in_study(conn, [int(row.id) for row in rows])
        extra = {pk: {A.SOP_CLASSES_IN_STUDY: uids} for pk, uids in classes.items()}

    # Everything that is the same for every row is worked out once.
    wanted_keys = [f"{tag:08X}" for tag in ordered]
    uid_keys = [(_UID_KEYS[each], _UID_COLUMNS[each]) for each in levels if each in _UID_KEYS]
    for key, _ in uid_keys:
        if key not in wanted_keys:
            wanted_keys.append(key)
    position = {name: i for i, name in enumerate(rows[0]._fields)}
    json_positions = [(each, position[f"json_{each}"]) for each in levels]
    uid_positions = [(key, position[column]) for key, column in uid_keys]
    computed_positions = [
        (f"{tag:08X}", tag, position[computed_column(tag)])
        for tag in sorted(computed_tags)
        if computed_column(tag) in position
    ]
    availability_key = f"{A.INSTANCE_AVAILABILITY:08X}"
    nearline_position = position.get(NEARLINE)
    tier_position = position.get("tier")
    empties = {
        f"{tag:08X}": empty
        for tag in forced
        if tag not in NOT_RENDERED and (empty := _empty(tag)) is not None
    }

    results: list[JsonObject] = []
    parsed: dict[str, JsonObject] = {}  # rows of one study share its JSON text
    for row in rows:
        stored: JsonObject = {}
        for each, at in json_positions:
            text = row[at]
            level_attrs = parsed.get(text) if each != level else None
            if level_attrs is None:
                level_attrs = json.loads(text)
                if each != level:
                    parsed[text] = level_attrs
            stored.update(level_attrs)
        for key, at in uid_positions:
            stored[key] = {"vr": "UI", "Value": [row[at]]}
        out: JsonObject = {}
        keys = stored if query.include_all else wanted_keys
        for key in keys:
            element = stored.get(key)
            if element is not None:
                out[key] = element
        for key, tag, at in computed_positions:
            out[key] = _computed(tag, row[at])
        for tag, value in extra.get(int(row.id), {}).items():
            out[f"{tag:08X}"] = _computed(tag, value)
        if availability:
            # PS3.3 C.4.23.1.1: NEARLINE = retrievable after a delay (the cold tier).
            if level == A.IMAGE and tier_position is not None:
                cold = row[tier_position] == "cold"
            else:
                cold = nearline_position is not None and bool(row[nearline_position])
            out[availability_key] = {"vr": "CS", "Value": ["NEARLINE" if cold else "ONLINE"]}
        for key, empty in empties.items():
            if key not in out:
                out[key] = empty
        # DICOM JSON objects list attributes in ascending tag order (as pydicom writes them);
        # 8 upper-case hex digits sort as the tags do.
        results.append(dict(sorted(out.items())))
    return results
