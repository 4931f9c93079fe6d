"""Reads and writes of the index, on an open connection (SQLAlchemy Core, any dialect).

Ingest creates the patient, study and series rows with ``INSERT .. ON CONFLICT DO NOTHING``
on their unique keys, then selects them: processes ingesting the same new study at the same
time all end up on the one row, whoever inserted it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from conformance import attributes as A
from conformance.statuses import StowFailure
from storage.errors import IngestRejected, NotFound
from storage.frames import spans_from_json, spans_to_json
from storage.index.compile import compile_query
from storage.index.schema import instances, patients, series, series_requests, studies
from storage.ingest import Analysis
from storage.metadata import dumps
from storage.model import InstanceLocation, Tier
from storage.query import Query, QueryResult


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _insert(conn: AsyncConnection, table: Table) -> Any:
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


async def find_instance(conn: AsyncConnection, sop_uid: str) -> StoredInstance | None:
    row = (
        await conn.execute(
            select(
                instances.c.id,
                instances.c.sha256,
                instances.c.blob_key,
                instances.c.tier,
                studies.c.study_uid,
                series.c.series_uid,
            )
            .select_from(
                instances.join(series, instances.c.series_pk == series.c.id).join(
                    studies, series.c.study_pk == studies.c.id
                )
            )
            .where(instances.c.sop_uid == sop_uid)
        )
    ).first()
    return StoredInstance(*row) if row is not None else None


async def _get_or_create(
    conn: AsyncConnection, table: Table, unique: dict[str, Any], values: dict[str, Any]
) -> tuple[int, bool]:
    """(row id, inserted) for the row with ``unique`` values, inserting it when missing."""
    statement = (
        _insert(conn, table)
        .values(**unique, **values)
        .on_conflict_do_nothing(index_elements=list(unique))
        .returning(table.c.id)
    )
    inserted = (await conn.execute(statement)).scalar_one_or_none()
    if inserted is not None:
        return int(inserted), True
    found = (
        await conn.execute(select(table.c.id).where(*(table.c[k] == v for k, v in unique.items())))
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
        "frames_json": (
            None if analysis.frames is None else json.dumps(spans_to_json(analysis.frames))
        ),
        "pixel_json": json.dumps(analysis.pixel_attributes),
        "metadata_json": dumps(analysis.metadata),
        "attributes_json": dumps(analysis.level_attributes[A.IMAGE]),
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


async def _series_pk(conn: AsyncConnection, analysis: Analysis) -> int:
    # Most instances join a series that exists already: one indexed lookup.
    existing = (
        await conn.execute(
            select(series.c.id, studies.c.study_uid)
            .select_from(series.join(studies, series.c.study_pk == studies.c.id))
            .where(series.c.series_uid == analysis.series_uid)
        )
    ).one_or_none()
    if existing is not None:
        _check_series_study(analysis, existing.study_uid)
        return int(existing.id)
    stamp = now()
    patient_columns = dict(analysis.columns[A.PATIENT])
    identity = {
        "patient_id": patient_columns.pop("patient_id"),
        "issuer_of_patient_id": patient_columns.pop("issuer_of_patient_id"),
    }
    patient_pk, _ = await _get_or_create(
        conn,
        patients,
        identity,
        {
            **patient_columns,
            "attributes_json": dumps(analysis.level_attributes[A.PATIENT]),
            "created_at": stamp,
        },
    )
    study_pk, _ = await _get_or_create(
        conn,
        studies,
        {"study_uid": analysis.study_uid},
        {
            **analysis.columns[A.STUDY],
            "patient_pk": patient_pk,
            "attributes_json": dumps(analysis.level_attributes[A.STUDY]),
            "created_at": stamp,
            "last_access_at": stamp,
        },
    )
    series_pk, created = await _get_or_create(
        conn,
        series,
        {"series_uid": analysis.series_uid},
        {
            **analysis.columns[A.SERIES],
            "study_pk": study_pk,
            "attributes_json": dumps(analysis.level_attributes[A.SERIES]),
            "created_at": stamp,
        },
    )
    if not created:
        # Another writer created the series meanwhile: it must be in this study too.
        owner = (
            await conn.execute(select(series.c.study_pk).where(series.c.id == series_pk))
        ).scalar_one()
        if owner != study_pk:
            study_of_series = (
                await conn.execute(select(studies.c.study_uid).where(studies.c.id == owner))
            ).scalar_one()
            _check_series_study(analysis, study_of_series)
    if created and analysis.requests:
        await conn.execute(
            series_requests.insert(), [{"series_pk": series_pk, **r} for r in analysis.requests]
        )
    return series_pk


async def insert_instance(conn: AsyncConnection, analysis: Analysis, tier: Tier) -> bool:
    """Index a new instance; False when another writer indexed this SOPInstanceUID first."""
    series_pk = await _series_pk(conn, analysis)
    statement = (
        _insert(conn, instances)
        .values(sop_uid=analysis.sop_uid, series_pk=series_pk, **_instance_values(analysis, tier))
        .on_conflict_do_nothing(index_elements=["sop_uid"])
        .returning(instances.c.id)
    )
    return (await conn.execute(statement)).scalar_one_or_none() is not None


async def replace_instance(
    conn: AsyncConnection, analysis: Analysis, tier: Tier, instance_id: int
) -> None:
    """Point an existing instance row at the replacement's blob and attributes."""
    old_series_pk = (
        await conn.execute(select(instances.c.series_pk).where(instances.c.id == instance_id))
    ).scalar_one()
    series_pk = await _series_pk(conn, analysis)
    await conn.execute(
        update(instances)
        .where(instances.c.id == instance_id)
        .values(series_pk=series_pk, **_instance_values(analysis, tier))
    )
    # The replacement may name another series or study; the old ones may now be empty.
    await _remove_empty_parents(conn, {int(old_series_pk)})


def _scope(study_uid: str, series_uid: str | None, sop_uid: str | None) -> list[Any]:
    terms: list[Any] = [studies.c.study_uid == study_uid]
    if series_uid is not None:
        terms.append(series.c.series_uid == series_uid)
    if sop_uid is not None:
        terms.append(instances.c.sop_uid == sop_uid)
    return terms


_INSTANCE_SOURCE = instances.join(series, instances.c.series_pk == series.c.id).join(
    studies, series.c.study_pk == studies.c.id
)
_INSTANCE_ORDER = (
    func.coalesce(series.c.series_number, 2**31 - 1),
    series.c.series_uid,
    func.coalesce(instances.c.instance_number, 2**31 - 1),
    instances.c.sop_uid,
)


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
    await _remove_empty_parents(conn, {int(row.series_pk) for row in rows})
    return [(row.tier, row.blob_key) for row in rows]


async def _remove_empty_parents(conn: AsyncConnection, series_pks: set[int]) -> None:
    """Delete the given series when they hold no instance, then their studies and patients
    when those became empty. Scoped to the affected rows: no scan of whole tables."""
    if not series_pks:
        return
    candidates = list(series_pks)
    empty_series = [
        int(row.id)
        for row in (
            await conn.execute(
                select(series.c.id, series.c.study_pk).where(
                    series.c.id.in_(candidates),
                    ~select(instances.c.id).where(instances.c.series_pk == series.c.id).exists(),
                )
            )
        ).all()
    ]
    if not empty_series:
        return
    study_pks = [
        int(pk)
        for pk in (
            await conn.execute(
                select(series.c.study_pk).where(series.c.id.in_(empty_series)).distinct()
            )
        ).scalars()
    ]
    await conn.execute(delete(series_requests).where(series_requests.c.series_pk.in_(empty_series)))
    await conn.execute(delete(series).where(series.c.id.in_(empty_series)))
    patient_pks = [
        int(pk)
        for pk in (
            await conn.execute(
                select(studies.c.patient_pk).where(studies.c.id.in_(study_pks)).distinct()
            )
        ).scalars()
    ]
    await conn.execute(
        delete(studies).where(
            studies.c.id.in_(study_pks),
            ~select(series.c.id).where(series.c.study_pk == studies.c.id).exists(),
        )
    )
    await conn.execute(
        delete(patients).where(
            patients.c.id.in_(patient_pks),
            ~select(studies.c.id).where(studies.c.patient_pk == patients.c.id).exists(),
        )
    )


async def blob_inventory(
    conn: AsyncConnection, study_uid: str | None
) -> list[tuple[str, str, str, str]]:
    """(sop_uid, tier, blob_key, sha256) of every instance (of one study)."""
    statement = select(
        instances.c.sop_uid, instances.c.tier, instances.c.blob_key, instances.c.sha256
    ).select_from(_INSTANCE_SOURCE)
    if study_uid is not None:
        statement = statement.where(studies.c.study_uid == study_uid)
    return [tuple(row) for row in (await conn.execute(statement)).all()]


async def search(conn: AsyncConnection, query: Query) -> QueryResult:
    from storage.index.results import render_rows

    compiled = compile_query(query)
    rows = (await conn.execute(compiled.statement)).all()
    matches: list[Dataset] = await render_rows(conn, query, compiled.levels, rows)
    return QueryResult(matches=matches, unsupported_keys=tuple(dict.fromkeys(compiled.unsupported)))


async def blob_is_named(conn: AsyncConnection, blob_key: str) -> bool:
    found = await conn.execute(select(instances.c.id).where(instances.c.blob_key == blob_key))
    return found.first() is not None


async def all_blob_keys(conn: AsyncConnection) -> list[str]:
    return list((await conn.execute(select(instances.c.blob_key))).scalars())
