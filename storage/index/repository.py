"""Reads and writes of the index, on an open connection (SQLAlchemy Core, any dialect).

Ingest creates the patient, study and series rows with ``INSERT .. ON CONFLICT DO NOTHING``
on their unique keys, then selects them: processes ingesting the same new study at the same
time all end up on the one row, whoever inserted it. The ingest functions are synchronous:
one transaction runs wholly in a worker thread (SQLite) or through ``run_sync`` (asyncpg),
see :class:`storage.index.engine.IngestIndex`; the read paths are async.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from conformance import attributes as A
from conformance.statuses import StowFailure
from storage.errors import IngestRejected, NotFound, StorageError
from storage.frames import spans_from_json
from storage.index.compile import compile_query
from storage.index.engine import IndexConflict
from storage.index.schema import instances, patients, series, series_requests, studies
from storage.ingest import Analysis
from storage.model import InstanceLocation, Tier
from storage.query import Query, QueryResult


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@dataclass(frozen=True)
class StoredInstance:
    id: int
    sha256: str
    blob_key: str
    tier: str
    study_uid: str
    series_uid: str


@dataclass(frozen=True)
class Indexed:
    """What one instance's part of an ingest transaction did."""

    inserted: bool
    """We indexed it (new, or replacing ``met``)."""
    met: StoredInstance | None = None
    """The row it replaced (``inserted``) or met with other content (not ``inserted``)."""


SeriesCache = dict[str, tuple[int, str]]
"""SeriesInstanceUID → (series row id, its StudyInstanceUID), valid within one transaction."""

_INSTANCE_SOURCE = instances.join(series, instances.c.series_pk == series.c.id).join(
    studies, series.c.study_pk == studies.c.id
)
_INSTANCE_ORDER = (
    func.coalesce(series.c.series_number, 2**31 - 1),
    series.c.series_uid,
    func.coalesce(instances.c.instance_number, 2**31 - 1),
    instances.c.sop_uid,
)


_STORED_COLUMNS = (
    instances.c.id,
    instances.c.sha256,
    instances.c.blob_key,
    instances.c.tier,
    studies.c.study_uid,
    series.c.series_uid,
    instances.c.sop_uid,
)


def find_instances(conn: Connection, sop_uids: Sequence[str]) -> dict[str, StoredInstance]:
    """The indexed instances among ``sop_uids`` (one query per 500)."""
    found: dict[str, StoredInstance] = {}
    unique = list(dict.fromkeys(sop_uids))
    for start in range(0, len(unique), 500):
        rows = conn.execute(
            select(*_STORED_COLUMNS)
            .select_from(_INSTANCE_SOURCE)
            .where(instances.c.sop_uid.in_(unique[start : start + 500]))
        ).all()
        for row in rows:
            found[row.sop_uid] = StoredInstance(*row[:6])
    return found


def _get_or_create(
    conn: Connection, table: Table, unique: dict[str, Any], values: dict[str, Any]
) -> tuple[int, bool]:
    """(row id, inserted) for the row with ``unique`` values, inserting it when missing."""
    statement = (
        _insert(conn, table)
        .values(**unique, **values)
        .on_conflict_do_nothing(index_elements=list(unique))
        .returning(table.c.id)
    )
    inserted = conn.execute(statement).scalar_one_or_none()
    if inserted is not None:
        return int(inserted), True
    found = conn.execute(
        select(table.c.id).where(*(table.c[k] == v for k, v in unique.items()))
    ).scalar_one()
    return int(found), False


def _instance_values(analysis: Analysis, tier: Tier) -> dict[str, Any]:
    stamp = now()
    return {
        **analysis.columns[A.IMAGE],
        "sop_class_uid": analysis.sop_class_uid,
        "transfer_syntax_uid": analysis.transfer_syntax_uid,
        "blob_key": analysis.blob_key,
        "tier": tier.value,
        "size": analysis.size,
        "sha256": analysis.sha256,
        "number_of_frames": analysis.number_of_frames,
        "frames_json": analysis.frames_json,
        "pixel_json": analysis.pixel_json,
        "metadata_json": analysis.metadata_json,
        "attributes_json": analysis.level_json[A.IMAGE],
        "stored_at": stamp,
        "last_access_at": stamp,
    }


def _check_series_study(analysis: Analysis, study_uid_of_series: str) -> None:
    """A SeriesInstanceUID is unique across studies (PS3.3 C.7.3.1): one that the archive
    already holds under another study is refused, never filed under that other study."""
    if study_uid_of_series != analysis.study_uid:
        raise IngestRejected(
            StowFailure.CANNOT_UNDERSTAND,
            f"SeriesInstanceUID {analysis.series_uid} already belongs to study "
            f"{study_uid_of_series}, not to this instance's study {analysis.study_uid}; "
            "the sender reused a series UID (fix its UID generation or the object)",
        )


def _series_pk(conn: Connection, analysis: Analysis, cache: SeriesCache) -> int:
    known = cache.get(analysis.series_uid)
    if known is None:
        # Most instances join a series that exists already: one indexed lookup, then none
        # for the rest of the transaction.
        existing = conn.execute(
            select(series.c.id, studies.c.study_uid)
            .select_from(series.join(studies, series.c.study_pk == studies.c.id))
            .where(series.c.series_uid == analysis.series_uid)
        ).one_or_none()
        if existing is not None:
            known = cache[analysis.series_uid] = (int(existing.id), existing.study_uid)
    if known is not None:
        _check_series_study(analysis, known[1])
        return known[0]
    stamp = now()
    patient_columns = dict(analysis.columns[A.PATIENT])
    identity = {
        "patient_id": patient_columns.pop("patient_id"),
        "issuer_of_patient_id": patient_columns.pop("issuer_of_patient_id"),
    }
    patient_pk, _ = _get_or_create(
        conn,
        patients,
        identity,
        {
            **patient_columns,
            "attributes_json": analysis.level_json[A.PATIENT],
            "created_at": stamp,
        },
    )
    study_pk, _ = _get_or_create(
        conn,
        studies,
        {"study_uid": analysis.study_uid},
        {
            **analysis.columns[A.STUDY],
            "patient_pk": patient_pk,
            "attributes_json": analysis.level_json[A.STUDY],
            "created_at": stamp,
            "last_access_at": stamp,
        },
    )
    series_pk, created = _get_or_create(
        conn,
        series,
        {"series_uid": analysis.series_uid},
        {
            **analysis.columns[A.SERIES],
            "study_pk": study_pk,
            "attributes_json": analysis.level_json[A.SERIES],
            "created_at": stamp,
        },
    )
    if not created:
        # Another writer created the series meanwhile: it must be in this study too.
        owner = conn.execute(select(series.c.study_pk).where(series.c.id == series_pk)).scalar_one()
        if owner != study_pk:
            study_of_series = conn.execute(
                select(studies.c.study_uid).where(studies.c.id == owner)
            ).scalar_one()
            _check_series_study(analysis, study_of_series)
    if created and analysis.requests:
        conn.execute(
            series_requests.insert(), [{"series_pk": series_pk, **r} for r in analysis.requests]
        )
    cache[analysis.series_uid] = (series_pk, analysis.study_uid)
    return series_pk


def insert_instance(
    conn: Connection, analysis: Analysis, tier: Tier, cache: SeriesCache
) -> int | None:
    """Index a new instance; its row id, or None when another writer indexed this
    SOPInstanceUID first."""
    series_pk = _series_pk(conn, analysis, cache)
    statement = (
        _insert(conn, instances)
        .values(sop_uid=analysis.sop_uid, series_pk=series_pk, **_instance_values(analysis, tier))
        .on_conflict_do_nothing(index_elements=["sop_uid"])
        .returning(instances.c.id)
    )
    found = conn.execute(statement).scalar_one_or_none()
    return None if found is None else int(found)


def replace_instance(
    conn: Connection, analysis: Analysis, tier: Tier, instance_id: int, cache: SeriesCache
) -> None:
    """Point an existing instance row at the replacement's blob and attributes."""
    old_series_pk = conn.execute(
        select(instances.c.series_pk).where(instances.c.id == instance_id)
    ).scalar_one()
    series_pk = _series_pk(conn, analysis, cache)
    conn.execute(
        update(instances)
        .where(instances.c.id == instance_id)
        .values(series_pk=series_pk, **_instance_values(analysis, tier))
    )
    # The replacement may name another series or study; the old ones may now be empty.
    if _remove_empty_parents(conn, {int(old_series_pk)}):
        cache.clear()


def _index_one(
    conn: Connection,
    analysis: Analysis,
    tier: Tier,
    replace: bool,
    current: dict[str, StoredInstance],
    cache: SeriesCache,
) -> tuple[Indexed, StoredInstance | None]:
    """Index one instance: (what happened, the row now indexed under its SOPInstanceUID
    when that changed)."""
    met = current.get(analysis.sop_uid)
    if met is None:
        new_id = insert_instance(conn, analysis, tier, cache)
        if new_id is not None:
            row = StoredInstance(
                new_id,
                analysis.sha256,
                analysis.blob_key,
                tier.value,
                analysis.study_uid,
                analysis.series_uid,
            )
            return Indexed(True), row
        # Another writer indexed this SOP Instance between our look-up and our insert.
        met = find_instances(conn, [analysis.sop_uid]).get(analysis.sop_uid)
        if met is None:
            raise IndexConflict(f"instance {analysis.sop_uid} vanished during ingest")
    if met.sha256 == analysis.sha256:
        return Indexed(False), None
    if not replace:
        return Indexed(False, met), None
    replace_instance(conn, analysis, tier, met.id, cache)
    row = StoredInstance(
        met.id,
        analysis.sha256,
        analysis.blob_key,
        tier.value,
        analysis.study_uid,
        analysis.series_uid,
    )
    return Indexed(True, met), row


def index_instances(
    conn: Connection, analyses: Sequence[Analysis], tier: Tier, *, replace: bool
) -> list[Indexed | StorageError]:
    """Index several instances in the caller's transaction: an instance that fails (a
    series UID of another study, a constraint a concurrent writer broke twice) leaves no row
    and its error in its place; the others are indexed (PS3.18 §10.5: each instance of a
    STOW request succeeds or fails on its own).

    New instances of series that resolve go in with one multi-row INSERT; the rest (already
    indexed, replacements, conflicts, failures) one by one, each on its own savepoint."""
    current = find_instances(conn, [a.sop_uid for a in analyses])
    cache: SeriesCache = {}
    results: list[Indexed | StorageError | None] = [None] * len(analyses)
    _insert_new(conn, analyses, tier, current, cache, results)
    for i, analysis in enumerate(analyses):
        if results[i] is None:
            results[i] = _index_alone(conn, analysis, tier, replace, current, cache)
    # The fast path creates an instance's patient/study/series rows before its INSERT; when
    # the instance then did not go in (another writer indexed its SOP Instance UID first),
    # rows it alone needed would stay behind empty and be listed by QIDO.
    not_inserted = {
        a.series_uid
        for a, r in zip(analyses, results, strict=True)
        if not (isinstance(r, Indexed) and r.inserted)
    }
    if not_inserted:
        pks = conn.execute(select(series.c.id).where(series.c.series_uid.in_(not_inserted)))
        _remove_empty_parents(conn, {int(pk) for pk in pks.scalars()})
    return [r if r is not None else IndexConflict("not indexed") for r in results]


def _insert_new(
    conn: Connection,
    analyses: Sequence[Analysis],
    tier: Tier,
    current: dict[str, StoredInstance],
    cache: SeriesCache,
    results: list[Indexed | StorageError | None],
) -> None:
    """The fast path of :func:`index_instances`: fills ``results`` for what it indexed or
    refused, leaves None where the instance needs the one-by-one path."""
    rows: list[dict[str, Any]] = []
    chosen: list[int] = []
    seen: set[str] = set()
    for i, analysis in enumerate(analyses):
        if analysis.sop_uid in current or analysis.sop_uid in seen:
            continue
        seen.add(analysis.sop_uid)
        try:
            if analysis.series_uid in cache:
                series_pk = _series_pk(conn, analysis, cache)  # no SQL
            else:
                with conn.begin_nested():
                    series_pk = _series_pk(conn, analysis, cache)
        except IngestRejected as exc:
            cache.pop(analysis.series_uid, None)
            results[i] = exc
            continue
        except IntegrityError:
            cache.clear()
            continue
        rows.append(
            {"sop_uid": analysis.sop_uid, "series_pk": series_pk} | _instance_values(analysis, tier)
        )
        chosen.append(i)
    if not rows:
        return
    statement = (
        _insert(conn, instances)
        .on_conflict_do_nothing(index_elements=["sop_uid"])
        .returning(instances.c.sop_uid, instances.c.id)
    )
    try:
        with conn.begin_nested():
            inserted = {row.sop_uid: int(row.id) for row in conn.execute(statement, rows)}
    except IntegrityError:
        # A series vanished under a concurrent delete: the one-by-one path recreates it.
        cache.clear()
        return
    for i in chosen:
        analysis = analyses[i]
        new_id = inserted.get(analysis.sop_uid)
        if new_id is None:
            continue  # another writer indexed it first: decided one by one
        current[analysis.sop_uid] = StoredInstance(
            new_id,
            analysis.sha256,
            analysis.blob_key,
            tier.value,
            analysis.study_uid,
            analysis.series_uid,
        )
        results[i] = Indexed(True)


def _index_alone(
    conn: Connection,
    analysis: Analysis,
    tier: Tier,
    replace: bool,
    current: dict[str, StoredInstance],
    cache: SeriesCache,
) -> Indexed | StorageError:
    for attempt in (1, 2):
        savepoint = conn.begin_nested()
        try:
            done, row = _index_one(conn, analysis, tier, replace, current, cache)
        except IngestRejected as exc:
            savepoint.rollback()
            cache.clear()
            return exc
        except IntegrityError as exc:
            # A concurrent delete removed the series/study this instance was joining
            # (PostgreSQL, READ COMMITTED): once more, creating them anew.
            savepoint.rollback()
            cache.clear()
            if attempt == 2:
                return IndexConflict(f"index conflict: {exc.orig}")
            continue
        savepoint.commit()
        if row is not None:
            current[analysis.sop_uid] = row
        return done
    return IndexConflict(f"instance {analysis.sop_uid} could not be indexed")


def _scope(study_uid: str, series_uid: str | None, sop_uid: str | None) -> list[Any]:
    terms: list[Any] = [studies.c.study_uid == study_uid]
    if series_uid is not None:
        terms.append(series.c.series_uid == series_uid)
    if sop_uid is not None:
        terms.append(instances.c.sop_uid == sop_uid)
    return terms


async def locate(
    conn: AsyncConnection, study_uid: str, series_uid: str | None, sop_uid: str | None
) -> list[InstanceLocation]:
    rows = (
        await conn.execute(
            select(
                studies.c.study_uid,
                series.c.series_uid,
                instances.c.sop_uid,
                instances.c.sop_class_uid,
                instances.c.transfer_syntax_uid,
                instances.c.blob_key,
                instances.c.tier,
                instances.c.size,
                instances.c.sha256,
                instances.c.number_of_frames,
                instances.c.frames_json,
                instances.c.pixel_json,
            )
            .select_from(_INSTANCE_SOURCE)
            .where(*_scope(study_uid, series_uid, sop_uid))
            .order_by(*_INSTANCE_ORDER)
        )
    ).all()
    if not rows:
        raise NotFound(_what(study_uid, series_uid, sop_uid))
    return [_location(row) for row in rows]


def _location(row: Any) -> InstanceLocation:
    return InstanceLocation(
        study_uid=row.study_uid,
        series_uid=row.series_uid,
        sop_instance_uid=row.sop_uid,
        sop_class_uid=row.sop_class_uid,
        transfer_syntax_uid=row.transfer_syntax_uid,
        blob_key=row.blob_key,
        tier=Tier(row.tier),
        size=int(row.size),
        sha256=row.sha256,
        number_of_frames=int(row.number_of_frames),
        frames=spans_from_json(json.loads(row.frames_json) if row.frames_json else None),
        pixel_attributes=json.loads(row.pixel_json),
    )


def _what(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
    if sop_uid is not None:
        return f"no instance {sop_uid} in series {series_uid} of study {study_uid}"
    if series_uid is not None:
        return f"no series {series_uid} in study {study_uid}"
    return f"no study {study_uid}"


async def instance_metadata(
    conn: AsyncConnection, study_uid: str, series_uid: str | None, sop_uid: str | None
) -> list[bytes]:
    rows = (
        await conn.execute(
            select(instances.c.metadata_json)
            .select_from(_INSTANCE_SOURCE)
            .where(*_scope(study_uid, series_uid, sop_uid))
            .order_by(*_INSTANCE_ORDER)
        )
    ).all()
    if not rows:
        raise NotFound(_what(study_uid, series_uid, sop_uid))
    return [row[0].encode("utf-8") for row in rows]


async def delete_instances(
    conn: AsyncConnection, study_uid: str, series_uid: str | None, sop_uid: str | None
) -> list[tuple[str, str]]:
    """Delete the addressed instances and their now-empty parents; returns (tier, blob_key)."""
    rows = (
        await conn.execute(
            select(instances.c.id, instances.c.series_pk, instances.c.tier, instances.c.blob_key)
            .select_from(_INSTANCE_SOURCE)
            .where(*_scope(study_uid, series_uid, sop_uid))
        )
    ).all()
    if not rows:
        raise NotFound(_what(study_uid, series_uid, sop_uid))
    ids = [row.id for row in rows]
    for start in range(0, len(ids), 500):
        await conn.execute(delete(instances).where(instances.c.id.in_(ids[start : start + 500])))
    await conn.run_sync(_remove_empty_parents, {int(row.series_pk) for row in rows})
    return [(row.tier, row.blob_key) for row in rows]


def _remove_empty_parents(conn: Connection, series_pks: set[int]) -> bool:
    """Delete the given series when they hold no instance, then their studies and patients
    when those became empty; True when a series went. Scoped to the affected rows: no scan
    of whole tables. Synchronous (``AsyncConnection.run_sync`` for async callers)."""
    if not series_pks:
        return False
    candidates = list(series_pks)
    empty_series = [
        int(row.id)
        for row in (
            conn.execute(
                select(series.c.id, series.c.study_pk).where(
                    series.c.id.in_(candidates),
                    ~select(instances.c.id).where(instances.c.series_pk == series.c.id).exists(),
                )
            )
        ).all()
    ]
    if not empty_series:
        return False
    study_pks = [
        int(pk)
        for pk in (
            conn.execute(select(series.c.study_pk).where(series.c.id.in_(empty_series)).distinct())
        ).scalars()
    ]
    conn.execute(delete(series_requests).where(series_requests.c.series_pk.in_(empty_series)))
    conn.execute(delete(series).where(series.c.id.in_(empty_series)))
    patient_pks = [
        int(pk)
        for pk in (
            conn.execute(select(studies.c.patient_pk).where(studies.c.id.in_(study_pks)).distinct())
        ).scalars()
    ]
    conn.execute(
        delete(studies).where(
            studies.c.id.in_(study_pks),
            ~select(series.c.id).where(series.c.study_pk == studies.c.id).exists(),
        )
    )
    conn.execute(
        delete(patients).where(
            patients.c.id.in_(patient_pks),
            ~select(studies.c.id).where(studies.c.patient_pk == patients.c.id).exists(),
        )
    )
    return True


async def blob_inventory(
    conn: AsyncConnection, study_uid: str | None, *, after_id: int = 0, limit: int = 1000
) -> list[tuple[int, str, str, str, str]]:
    """(row id, sop_uid, tier, blob_key, sha256) of up to ``limit`` instances (of one study)
    with row ids above ``after_id``, in id order: one page of a walk over the archive."""
    statement = (
        select(
            instances.c.id,
            instances.c.sop_uid,
            instances.c.tier,
            instances.c.blob_key,
            instances.c.sha256,
        )
        .select_from(_INSTANCE_SOURCE)
        .where(instances.c.id > after_id)
        .order_by(instances.c.id)
        .limit(limit)
    )
    if study_uid is not None:
        statement = statement.where(studies.c.study_uid == study_uid)
    return [tuple(row) for row in (await conn.execute(statement)).all()]


async def count_instances(conn: AsyncConnection, study_uid: str | None) -> int:
    statement = select(func.count()).select_from(_INSTANCE_SOURCE)
    if study_uid is not None:
        statement = statement.where(studies.c.study_uid == study_uid)
    return int((await conn.execute(statement)).scalar_one())


async def search(conn: AsyncConnection, query: Query) -> QueryResult:
    from storage.index.results import render_rows

    compiled = compile_query(query)
    rows = (await conn.execute(compiled.statement)).all()
    matches: list[Dataset] = await render_rows(conn, query, compiled.levels, rows)
    return QueryResult(matches=matches, unsupported_keys=tuple(dict.fromkeys(compiled.unsupported)))


async def blob_is_named(conn: AsyncConnection, blob_key: str) -> bool:
    found = await conn.execute(select(instances.c.id).where(instances.c.blob_key == blob_key))
    return found.first() is not None


def named_blobs(conn: Connection, blob_keys: Sequence[str]) -> set[str]:
    """The keys among ``blob_keys`` that some instance row names."""
    named: set[str] = set()
    unique = list(dict.fromkeys(blob_keys))
    for start in range(0, len(unique), 500):
        chosen = unique[start : start + 500]
        named.update(
            conn.execute(select(instances.c.blob_key).where(instances.c.blob_key.in_(chosen)))
            .scalars()
            .all()
        )
    return named
