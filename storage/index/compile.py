"""Compile a :class:`storage.query.Query` to one SQL SELECT for the index (any dialect).

Matching semantics follow PS3.4 C.2.2.2: single value (PN case-insensitive, on the normalized
column), wildcard ``*``/``?`` (SQL LIKE with an escape character), ranges of DA/TM/DT (fixed
width digit strings compared lexicographically, open ends allowed), UID lists (IN), sequence
matching of RequestAttributesSequence (one stored item must match every sub-key). With
``fuzzy`` PN keys match any name component by prefix (QIDO ``fuzzymatching=true``).

A key the index has no column for is *unsupported*: it is ignored for matching and reported
(QIDO answers with a Warning header); a universal key is only a return key and never is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, FromClause, Select, and_, exists, func, literal, or_, select
from sqlalchemy.sql.expression import ColumnClause

from conformance import attributes as A
from storage.errors import InvalidQuery
from storage.index.schema import (
    LEVEL_TABLES,
    MATCH_COLUMNS,
    REQUEST_ATTRIBUTES_SEQUENCE,
    REQUEST_ITEM_COLUMNS,
    STUDY_PATIENT_COLUMNS,
    ColumnKind,
    instances,
    patients,
    series,
    series_requests,
    studies,
)
from storage.ingest import normalize_datetime, normalize_pn, normalize_time
from storage.query import MatchKey, MatchKind, Query, QueryLevel

_ESCAPE = "\\"
_LAST = 2**31 - 1  # sorts entities without a number after those with one


@dataclass
class CompiledQuery:
    statement: Select[tuple[object, ...]]
    unsupported: list[int] = field(default_factory=list)
    levels: tuple[str, ...] = ()
    """Levels whose attributes JSON the statement selects, top first."""


def _like_pattern(value: str) -> str:
    escaped = value.replace(_ESCAPE, _ESCAPE * 2).replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _text_condition(column: ColumnClause[str], key: MatchKey, value: str) -> ColumnElement[bool]:
    # A backslash separates values (PS3.5 §6.4): a key with several matches any of them.
    # None of the indexed text VRs (AE, CS, SH, LO) may contain a backslash itself.
    values = [v for v in value.split("\\") if v] or [value]
    wildcard = key.kind is MatchKind.WILDCARD
    terms = [
        column.like(_like_pattern(v), escape=_ESCAPE) if wildcard else column == v for v in values
    ]
    return terms[0] if len(terms) == 1 else or_(*terms)


def _pn_condition(column: ColumnClause[str], key: MatchKey, fuzzy: bool) -> ColumnElement[bool]:
    value = normalize_pn(key.value or "") or ""
    if key.kind is MatchKind.WILDCARD:
        return column.like(_like_pattern(value), escape=_ESCAPE)
    exact = column == value
    if not fuzzy:
        return exact
    # Fuzzy: every component of the query is the prefix of some component of the stored
    # name (components split by ^, groups by =, words by space).
    tokens = [t for t in value.replace("=", "^").replace(" ", "^").split("^") if t]
    conditions = []
    for token in tokens:
        prefix = _like_pattern(token)
        conditions.append(
            or_(
                *(
                    column.like(f"{lead}{prefix}%", escape=_ESCAPE)
                    for lead in ("", "%^", "% ", "%=")
                )
            )
        )
    return or_(exact, and_(*conditions)) if conditions else exact


def _normalize_bound(kind: ColumnKind, value: str, *, upper: bool) -> str:
    if kind is ColumnKind.TIME:
        return normalize_time(value, upper=upper)
    if kind is ColumnKind.DATETIME:
        return normalize_datetime(value, upper=upper)
    return value


def _temporal_condition(
    column: ColumnClause[str], kind: ColumnKind, key: MatchKey
) -> ColumnElement[bool]:
    if key.kind is MatchKind.RANGE:
        parts = []
        if key.lower is not None:
            parts.append(column >= _normalize_bound(kind, key.lower, upper=False))
        if key.upper is not None:
            parts.append(column <= _normalize_bound(kind, key.upper, upper=True))
        return and_(*parts)
    value = key.value or ""
    if kind is ColumnKind.DATE:
        return column == value
    # A single TM/DT value matches everything within its precision (e.g. TM 10 = 10:xx).
    return and_(
        column >= _normalize_bound(kind, value, upper=False),
        column <= _normalize_bound(kind, value, upper=True),
    )


def _int_condition(column: ColumnClause[int], key: MatchKey) -> ColumnElement[bool]:
    values = (key.value or "").replace(",", "\\").split("\\")
    try:
        numbers = [int(v) for v in values if v.strip()]
    except ValueError:
        raise InvalidQuery(f"{key.keyword} needs an integer, not {key.value!r}") from None
    return column.in_(numbers) if len(numbers) > 1 else column == numbers[0]


def column_condition(
    column: ColumnClause[object], kind: ColumnKind, key: MatchKey, fuzzy: bool
) -> ColumnElement[bool] | None:
    """The WHERE term for ``key`` on ``column``; None for a universal key."""
    if key.kind is MatchKind.UNIVERSAL:
        return None
    if key.kind is MatchKind.UID_LIST:
        return column.in_(key.uids)
    if key.kind is MatchKind.SEQUENCE:
        raise InvalidQuery(f"{key.keyword} is not a sequence")
    if kind in (ColumnKind.DATE, ColumnKind.TIME, ColumnKind.DATETIME):
        return _temporal_condition(column, kind, key)  # type: ignore[arg-type]
    if key.kind is MatchKind.RANGE:
        raise InvalidQuery(f"{key.keyword} cannot be matched by range")
    if kind is ColumnKind.INT:
        return _int_condition(column, key)  # type: ignore[arg-type]
    if kind is ColumnKind.PN:
        return _pn_condition(column, key, fuzzy)  # type: ignore[arg-type]
    return _text_condition(column, key, key.value or "")  # type: ignore[arg-type]


def _column(level: str, name: str, kind: ColumnKind) -> ColumnClause[object]:
    table = LEVEL_TABLES[level]
    return table.c[f"{name}_norm" if kind is ColumnKind.PN else name]


def _values(key: MatchKey) -> list[str]:
    if key.kind is MatchKind.UID_LIST:
        return list(key.uids)
    raw = key.value or ""
    return [v.strip() for v in raw.replace(",", "\\").split("\\") if v.strip()]


def _study_computed_condition(key: MatchKey) -> ColumnElement[bool] | None:
    """ModalitiesInStudy / SOPClassesInStudy: some series / instance of the study has it."""
    if key.kind is MatchKind.UNIVERSAL:
        return None
    if key.tag == A.MODALITIES_IN_STUDY:
        column: ColumnClause[object] = series.c.modality
        inner = select(series.c.id).where(series.c.study_pk == studies.c.id)
    else:
        column = instances.c.sop_class_uid
        inner = (
            select(instances.c.id)
            .join(series, instances.c.series_pk == series.c.id)
            .where(series.c.study_pk == studies.c.id)
        )
    if key.kind is MatchKind.WILDCARD:
        match = column.like(_like_pattern(key.value or ""), escape=_ESCAPE)
    else:
        match = column.in_(_values(key))
    return exists(inner.where(match))


def _request_sequence_condition(
    key: MatchKey, fuzzy: bool, unsupported: list[int]
) -> ColumnElement[bool] | None:
    terms: list[ColumnElement[bool]] = []
    for sub in key.items:
        target = REQUEST_ITEM_COLUMNS.get(sub.tag)
        if target is None:
            if sub.kind is not MatchKind.UNIVERSAL:
                unsupported.append(sub.tag)
            continue
        term = column_condition(
            series_requests.c[target.column],
            target.kind,
            sub,
            fuzzy,
        )
        if term is not None:
            terms.append(term)
    if not terms:
        return None
    return exists(
        select(series_requests.c.id).where(series_requests.c.series_pk == series.c.id, *terms)
    )


def compile_query(query: Query) -> CompiledQuery:
    level = query.level.value
    levels = A.levels_up_to(level)
    if query.level.value == A.PATIENT:
        statement = select(patients.c.id, patients.c.attributes_json.label("json_PATIENT"))
        source: FromClause = patients
    else:
        statement = select(LEVEL_TABLES[level].c.id)
        source = studies.join(patients, studies.c.patient_pk == patients.c.id)
        if level in (A.SERIES, A.IMAGE):
            source = series.join(source, series.c.study_pk == studies.c.id)
        if level == A.IMAGE:
            source = instances.join(source, instances.c.series_pk == series.c.id)
        for each in levels:
            statement = statement.add_columns(
                LEVEL_TABLES[each].c.attributes_json.label(f"json_{each}")
            )
        statement = statement.add_columns(studies.c.study_uid)
        if level in (A.SERIES, A.IMAGE):
            statement = statement.add_columns(series.c.series_uid)
        if level == A.IMAGE:
            statement = statement.add_columns(instances.c.sop_uid, instances.c.tier)
    statement = statement.select_from(source)

    unsupported: list[int] = []
    conditions: list[ColumnElement[bool]] = []
    for key in query.keys:
        term: ColumnElement[bool] | None
        target = MATCH_COLUMNS.get(key.tag)
        if level != A.PATIENT and key.tag in STUDY_PATIENT_COLUMNS:
            target = STUDY_PATIENT_COLUMNS[key.tag]
        if target is not None and target.level in levels:
            term = column_condition(
                _column(target.level, target.column, target.kind), target.kind, key, query.fuzzy
            )
        elif level == A.STUDY and key.tag in (A.MODALITIES_IN_STUDY, A.SOP_CLASSES_IN_STUDY):
            term = _study_computed_condition(key)
        elif key.tag == REQUEST_ATTRIBUTES_SEQUENCE and level in (A.SERIES, A.IMAGE):
            term = (
                _request_sequence_condition(key, query.fuzzy, unsupported)
                if key.kind is MatchKind.SEQUENCE
                else None
            )
        else:
            if key.kind is not MatchKind.UNIVERSAL:
                unsupported.append(key.tag)
            continue
        if term is not None:
            conditions.append(term)
    if conditions:
        statement = statement.where(*conditions)

    statement = statement.order_by(*_order(level))
    if query.offset:
        statement = statement.offset(query.offset)
    if query.limit is not None:
        statement = statement.limit(query.limit)
    return CompiledQuery(statement, unsupported, levels)


def _order(level: str) -> list[ColumnElement[object]]:
    if level == A.PATIENT:
        return [patients.c.patient_id, patients.c.id]
    study_order: list[ColumnElement[object]] = [
        func.coalesce(studies.c.study_date, literal("")).desc(),
        func.coalesce(studies.c.study_time, literal("")).desc(),
        studies.c.study_uid,
    ]
    if level == A.STUDY:
        return study_order
    series_order: list[ColumnElement[object]] = [
        func.coalesce(series.c.series_number, literal(_LAST)),
        series.c.series_uid,
    ]
    if level == A.SERIES:
        return [*study_order, *series_order]
    return [
        *study_order,
        *series_order,
        func.coalesce(instances.c.instance_number, literal(_LAST)),
        instances.c.sop_uid,
    ]


def supported_matching_keys(level: QueryLevel) -> frozenset[int]:
    """Every attribute the index matches on at ``level`` (for the conformance statement);
    any other non-universal key is reported as unsupported."""
    levels = A.levels_up_to(level.value)
    tags = {tag for tag, column in MATCH_COLUMNS.items() if column.level in levels}
    if level is not QueryLevel.PATIENT:
        tags |= set(STUDY_PATIENT_COLUMNS)
    if level is QueryLevel.STUDY:
        tags |= {A.MODALITIES_IN_STUDY, A.SOP_CLASSES_IN_STUDY}
    if level in (QueryLevel.SERIES, QueryLevel.IMAGE):
        tags.add(REQUEST_ATTRIBUTES_SEQUENCE)
    return frozenset(tags)
