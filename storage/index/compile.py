"""Compile a :class:`storage.query.Query` to one SQL SELECT per page for the index (any dialect).

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
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    and_,
    exists,
    func,
    literal_column,
    or_,
    select,
)
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
    statement: Select[Any]
    """One page of results: ids, each level's attributes JSON, UIDs, computed attributes."""
    matching: Select[Any]
    """The matching SELECT alone (ids and sort keys of the page), for benchmarks / EXPLAIN."""
    unsupported: list[int] = field(default_factory=list)
    levels: tuple[str, ...] = ()
    """Levels whose attributes JSON the statement selects, top first."""
    computed: tuple[int, ...] = ()
    """Computed attributes the statement selects (columns named by :func:`computed_column`)."""


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


def requested(query: Query) -> tuple[list[int], set[int]]:
    """(tags to return in order, tags that must be present even when empty).

    The level's default return attributes (PS3.18 Tables 10.6.3-3/4/5), then every matching
    key and included attribute; keys and includes are returned even when empty (PS3.4
    C.2.2.3). RetrieveURL and QueryRetrieveLevel are added by the service layer."""
    level = query.level.value
    forced = {key.tag for key in query.keys} | set(query.include)
    ordered = list(dict.fromkeys([*A.DEFAULT_RETURN[level], *sorted(forced)]))
    return [t for t in ordered if t not in NOT_RENDERED], forced - NOT_RENDERED


NOT_RENDERED = frozenset({A.RETRIEVE_URL, 0x0008_0052})
"""Added by the HTTP layer (RetrieveURL) or by the service layer from its own state."""


def computed_column(tag: int) -> str:
    """The label of the statement's column that carries computed attribute ``tag``."""
    return f"c_{tag:08X}"


NEARLINE = "nearline"
"""Label of the column: the study / series has an instance on the cold tier."""


def _computed_statements(
    level: str, page_id: ColumnElement[int], wanted: set[int]
) -> dict[int, ColumnElement[Any]]:
    """Correlated scalar subqueries for the computed attributes of one page row.

    Evaluated for the page's rows only (the page is a LIMITed subquery), never for every
    match. SOPClassesInStudy is not here: it aggregates instances (see results)."""
    study_instances = series.join(instances, instances.c.series_pk == series.c.id)
    statements: dict[int, Select[Any]] = {}
    if level == A.STUDY:
        statements = {
            A.NUMBER_OF_STUDY_RELATED_SERIES: select(func.count())
            .select_from(series)
            .where(series.c.study_pk == page_id),
            A.NUMBER_OF_STUDY_RELATED_INSTANCES: select(func.count())
            .select_from(study_instances)
            .where(series.c.study_pk == page_id),
            # Duplicates (several series of one modality) are removed when rendering: a
            # DISTINCT aggregate with a separator exists on PostgreSQL but not on SQLite.
            A.MODALITIES_IN_STUDY: select(func.aggregate_strings(series.c.modality, "\\"))
            .select_from(series)
            .where(series.c.study_pk == page_id),
        }
    elif level == A.SERIES:
        statements = {
            A.NUMBER_OF_SERIES_RELATED_INSTANCES: select(func.count())
            .select_from(instances)
            .where(instances.c.series_pk == page_id)
        }
    elif level == A.PATIENT:
        patient_series = studies.join(series, series.c.study_pk == studies.c.id)
        statements = {
            A.NUMBER_OF_PATIENT_RELATED_STUDIES: select(func.count())
            .select_from(studies)
            .where(studies.c.patient_pk == page_id),
            A.NUMBER_OF_PATIENT_RELATED_SERIES: select(func.count())
            .select_from(patient_series)
            .where(studies.c.patient_pk == page_id),
            A.NUMBER_OF_PATIENT_RELATED_INSTANCES: select(func.count())
            .select_from(patient_series.join(instances, instances.c.series_pk == series.c.id))
            .where(studies.c.patient_pk == page_id),
        }
    return {
        tag: statement.scalar_subquery() for tag, statement in statements.items() if tag in wanted
    }


def _nearline_column(level: str, page_id: ColumnElement[int]) -> ColumnElement[bool]:
    # A literal, not a bound parameter: PostgreSQL uses the partial index ix_instances_cold
    # (WHERE tier = 'cold') only when it can prove the predicate while planning.
    cold = instances.c.tier == literal_column("'cold'")
    if level == A.SERIES:
        inner = select(instances.c.id).where(instances.c.series_pk == page_id, cold)
    else:
        inner = (
            select(instances.c.id)
            .select_from(series.join(instances, instances.c.series_pk == series.c.id))
            .where(series.c.study_pk == page_id, cold)
        )
    return exists(inner)


def wanted_computed(query: Query) -> tuple[set[int], bool]:
    """(computed attributes to return, whether InstanceAvailability is returned)."""
    level = query.level.value
    ordered, _ = requested(query)
    computed = set(A.COMPUTED[level]) if query.include_all else set(ordered) & A.COMPUTED[level]
    availability = A.INSTANCE_AVAILABILITY in ordered and level != A.PATIENT
    return computed, availability


def compile_query(query: Query) -> CompiledQuery:
    """One SELECT per page: the matching rows (ordered, paged) in a subquery, joined to
    each level's attributes JSON, with the computed attributes of those rows only."""
    level = query.level.value
    levels = A.levels_up_to(level)
    unsupported: list[int] = []
    conditions: list[ColumnElement[bool]] = []
    needs_patients = False
    for key in query.keys:
        term: ColumnElement[bool] | None
        target = MATCH_COLUMNS.get(key.tag)
        if level != A.PATIENT and key.tag in STUDY_PATIENT_COLUMNS:
            target = STUDY_PATIENT_COLUMNS[key.tag]
        if target is not None and target.level in levels:
            term = column_condition(
                _column(target.level, target.column, target.kind), target.kind, key, query.fuzzy
            )
            needs_patients |= target.level == A.PATIENT and term is not None
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

    # The matching SELECT: ids of the page's rows (and of their parents) and the sort keys.
    if level == A.PATIENT:
        source: FromClause = patients
        ids: list[ColumnElement[Any]] = [patients.c.id.label("id")]
    else:
        source = studies
        if needs_patients:
            source = source.join(patients, studies.c.patient_pk == patients.c.id)
        if level in (A.SERIES, A.IMAGE):
            source = series.join(source, series.c.study_pk == studies.c.id)
        if level == A.IMAGE:
            source = instances.join(source, instances.c.series_pk == series.c.id)
        ids = [LEVEL_TABLES[level].c.id.label("id"), studies.c.patient_pk.label("pk_PATIENT")]
        if level in (A.SERIES, A.IMAGE):
            ids.append(studies.c.id.label("pk_STUDY"))
        if level == A.IMAGE:
            ids.append(series.c.id.label("pk_SERIES"))
    order = _order(level)
    sort_keys = [expression.label(f"sk{i}") for i, (expression, _) in enumerate(order)]
    matching = select(*ids, *sort_keys).select_from(source)
    if conditions:
        matching = matching.where(*conditions)
    matching = matching.order_by(
        *(expression.desc() if descending else expression for expression, descending in order)
    )
    if query.offset:
        matching = matching.offset(query.offset)
    if query.limit is not None:
        matching = matching.limit(query.limit)

    # The page joined to its levels' rows, with the computed attributes per page row.
    page = matching.subquery("page")
    table = LEVEL_TABLES[level]
    joined: FromClause = page.join(table, table.c.id == page.c.id)
    for each in levels:
        if each != level:
            upper = LEVEL_TABLES[each]
            joined = joined.join(upper, upper.c.id == page.c[f"pk_{each}"])
    columns: list[ColumnElement[Any]] = [page.c.id]
    columns += [LEVEL_TABLES[each].c.attributes_json.label(f"json_{each}") for each in levels]
    if level != A.PATIENT:
        columns.append(studies.c.study_uid)
    if level in (A.SERIES, A.IMAGE):
        columns.append(series.c.series_uid)
    if level == A.IMAGE:
        columns += [instances.c.sop_uid, instances.c.tier]
    computed, availability = wanted_computed(query)
    subqueries = _computed_statements(level, page.c.id, computed)
    columns += [sub.label(computed_column(tag)) for tag, sub in subqueries.items()]
    if availability and level in (A.STUDY, A.SERIES):
        columns.append(_nearline_column(level, page.c.id).label(NEARLINE))
    statement = (
        select(*columns)
        .select_from(joined)
        .order_by(
            *(
                page.c[f"sk{i}"].desc() if descending else page.c[f"sk{i}"]
                for i, (_, descending) in enumerate(order)
            )
        )
    )
    return CompiledQuery(statement, matching, unsupported, levels, tuple(subqueries))


def _order(level: str) -> list[tuple[ColumnElement[Any], bool]]:
    """(expression, descending) pairs: newest studies first, then series and instance
    numbers (unnumbered last), UIDs breaking ties.

    The empty-string and sentinel fallbacks are SQL literals, not bound parameters, so the
    expressions are the very ones the index ``ix_studies_list_order`` (migration 0004) is
    built on: PostgreSQL and SQLite then walk that index and stop after one page instead of
    sorting every match."""
    if level == A.PATIENT:
        return [(patients.c.patient_id, False), (patients.c.id, False)]
    study_order: list[tuple[ColumnElement[Any], bool]] = [
        (func.coalesce(studies.c.study_date, literal_column("''")), True),
        (func.coalesce(studies.c.study_time, literal_column("''")), True),
        (studies.c.study_uid, False),
    ]
    if level == A.STUDY:
        return study_order
    series_order: list[tuple[ColumnElement[Any], bool]] = [
        (func.coalesce(series.c.series_number, literal_column(str(_LAST))), False),
        (series.c.series_uid, False),
    ]
    if level == A.SERIES:
        return [*study_order, *series_order]
    return [
        *study_order,
        *series_order,
        (func.coalesce(instances.c.instance_number, literal_column(str(_LAST))), False),
        (instances.c.sop_uid, False),
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
