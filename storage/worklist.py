"""The Modality Worklist store: scheduled procedure steps and their matching (PS3.4 K.6).

Each item is one requested procedure with one Scheduled Procedure Step (the first item of
ScheduledProcedureStepSequence, 0040,0100), kept whole as DICOM JSON (PS3.18 F.2) with a
status (``SCHEDULED`` / ``CANCELED``; UPS-RS will add ``IN PROGRESS`` / ``COMPLETED``) in the
``worklist_items`` table of the index, on the Archive's engine (SQLite or PostgreSQL).

Matching takes :class:`storage.query.MatchKey` keys, the same model QIDO-RS and C-FIND use,
and compiles them with the index's own per-column matcher
(:func:`storage.index.compile.column_condition`), so PN is case-insensitive on a normalized
column, ``*``/``?`` wildcards are SQL LIKE, DA/TM ranges are inclusive and open-ended. The SPS
sub-keys are matched on the flattened step columns (a sequence key with one item of sub-keys,
PS3.4 C.2.2.2.6). Keys without a column are *unsupported*: ignored for matching, reported to
the caller (C-FIND answers 0xFF01), still returned. Cancelled items never match.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.errors import InvalidQuery, NotFound, StorageError
from storage.index.compile import column_condition
from storage.index.schema import ColumnKind, worklist_items
from storage.ingest import normalize_pn, normalize_time
from storage.query import MatchKey, MatchKind

SCHEDULED_PROCEDURE_STEP_SEQUENCE = 0x0040_0100

# Top-level attribute -> (column, kind).
_ITEM_COLUMNS: dict[int, tuple[str, ColumnKind]] = {
    0x0010_0010: ("patient_name_norm", ColumnKind.PN),
    0x0010_0020: ("patient_id", ColumnKind.TEXT),
    0x0008_0050: ("accession_number", ColumnKind.TEXT),
    0x0040_1001: ("requested_procedure_id", ColumnKind.TEXT),
}
# ScheduledProcedureStepSequence sub-attribute -> (column, kind).
_STEP_COLUMNS: dict[int, tuple[str, ColumnKind]] = {
    0x0040_0001: ("scheduled_station_ae_title", ColumnKind.TEXT),
    0x0040_0002: ("sps_start_date", ColumnKind.DATE),
    0x0040_0003: ("sps_start_time", ColumnKind.TIME),
    0x0008_0060: ("modality", ColumnKind.TEXT),
    0x0040_0009: ("sps_id", ColumnKind.TEXT),
}


class WorklistStatus(enum.Enum):
    SCHEDULED = "SCHEDULED"
    CANCELED = "CANCELED"


class InvalidWorklistItem(StorageError):
    """A worklist item that cannot be stored as given (HTTP 400): the message says why."""


class WorklistItemCanceled(StorageError):
    """The item is cancelled and can no longer change (HTTP 409)."""


@dataclass(frozen=True)
class WorklistItem:
    id: str
    status: WorklistStatus
    dataset: Dataset
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class WorklistSearch:
    items: list[WorklistItem]
    unsupported_keys: tuple[int, ...] = ()


class WorklistStore:
    """Create / update / cancel / get / search worklist items on the index's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, dataset: Dataset) -> WorklistItem:
        columns = _columns_of(dataset)
        item_id = generate_uid()
        now = _now()
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(worklist_items).values(
                    id=item_id,
                    status=WorklistStatus.SCHEDULED.value,
                    dataset_json=json.dumps(dataset.to_json_dict()),
                    created_at=now,
                    updated_at=now,
                    **columns,
                )
            )
        return WorklistItem(item_id, WorklistStatus.SCHEDULED, dataset, now, now)

    async def update(self, item_id: str, dataset: Dataset) -> WorklistItem:
        columns = _columns_of(dataset)
        now = _now()
        async with self._engine.begin() as conn:
            current = await self._row(conn, item_id)
            if current["status"] == WorklistStatus.CANCELED.value:
                raise WorklistItemCanceled(f"worklist item {item_id} is cancelled")
            await conn.execute(
                update(worklist_items)
                .where(worklist_items.c.id == item_id)
                .values(dataset_json=json.dumps(dataset.to_json_dict()), updated_at=now, **columns)
            )
        return WorklistItem(
            item_id, WorklistStatus(current["status"]), dataset, current["created_at"], now
        )

    async def cancel(self, item_id: str) -> WorklistItem:
        """Mark the item CANCELED (idempotent); it no longer matches worklist queries."""
        now = _now()
        async with self._engine.begin() as conn:
            current = await self._row(conn, item_id)
            if current["status"] != WorklistStatus.CANCELED.value:
                await conn.execute(
                    update(worklist_items)
                    .where(worklist_items.c.id == item_id)
                    .values(status=WorklistStatus.CANCELED.value, updated_at=now)
                )
            else:
                now = current["updated_at"]
        return WorklistItem(
            item_id,
            WorklistStatus.CANCELED,
            _dataset(current["dataset_json"]),
            current["created_at"],
            now,
        )

    async def get(self, item_id: str) -> WorklistItem:
        async with self._engine.connect() as conn:
            return _item(await self._row(conn, item_id))

    async def delete(self, item_id: str) -> None:
        """Remove the item for good (administrative clean-up; the REST API cancels)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(worklist_items).where(worklist_items.c.id == item_id)
            )
            if not result.rowcount:
                raise NotFound(f"no worklist item {item_id}")

    async def search(
        self,
        keys: tuple[MatchKey, ...],
        *,
        include_canceled: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> WorklistSearch:
        conditions, unsupported = compile_keys(keys)
        if not include_canceled:
            conditions.append(worklist_items.c.status != WorklistStatus.CANCELED.value)
        statement = (
            select(worklist_items)
            .where(*conditions)
            .order_by(
                worklist_items.c.sps_start_date,
                worklist_items.c.sps_start_time,
                worklist_items.c.id,
            )
        )
        if offset:
            statement = statement.offset(offset)
        if limit is not None:
            statement = statement.limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return WorklistSearch([_item(row) for row in rows], tuple(unsupported))

    @staticmethod
    async def _row(conn: Any, item_id: str) -> Any:
        row = (
            (await conn.execute(select(worklist_items).where(worklist_items.c.id == item_id)))
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"no worklist item {item_id}")
        return row


def compile_keys(keys: tuple[MatchKey, ...]) -> tuple[list[ColumnElement[bool]], list[int]]:
    """WHERE terms for the keys the worklist table can match, and the tags it cannot."""
    conditions: list[ColumnElement[bool]] = []
    unsupported: list[int] = []

    def add(table_map: dict[int, tuple[str, ColumnKind]], key: MatchKey) -> None:
        target = table_map.get(key.tag)
        if target is None:
            if key.kind is not MatchKind.UNIVERSAL:
                unsupported.append(key.tag)
            return
        name, kind = target
        term = column_condition(worklist_items.c[name], kind, key, False)
        if term is not None:
            conditions.append(term)

    for key in keys:
        if key.tag == SCHEDULED_PROCEDURE_STEP_SEQUENCE:
            if key.kind is MatchKind.SEQUENCE:
                for sub in key.items:
                    add(_STEP_COLUMNS, sub)
            continue
        add(_ITEM_COLUMNS, key)
    return conditions, unsupported


def validate_item(dataset: Dataset) -> None:
    """Raise InvalidWorklistItem unless ``dataset`` is a usable worklist item (PS3.4 K.6.1.2.2:
    the Type 1 return keys a modality relies on)."""
    _columns_of(dataset)


def _columns_of(dataset: Dataset) -> dict[str, str | None]:
    steps = dataset.get("ScheduledProcedureStepSequence")
    if not steps:
        raise InvalidWorklistItem(
            "ScheduledProcedureStepSequence (0040,0100) with one item is required"
        )
    if len(steps) != 1:
        raise InvalidWorklistItem(
            "ScheduledProcedureStepSequence (0040,0100) must hold exactly one item; "
            "create one worklist item per scheduled procedure step"
        )
    step = steps[0]
    missing = [
        keyword
        for keyword, ds in (
            ("PatientID", dataset),
            ("ScheduledProcedureStepSequence[0].Modality", step),
            ("ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate", step),
        )
        if not _text(ds, keyword.rsplit(".", 1)[-1])
    ]
    if missing:
        raise InvalidWorklistItem(f"required attributes missing or empty: {', '.join(missing)}")
    date = _text(step, "ScheduledProcedureStepStartDate") or ""
    time = _text(step, "ScheduledProcedureStepStartTime")
    try:
        # The parser QIDO/C-FIND use, so whatever is stored can be matched later.
        MatchKey.parse(0x0040_0002, date)
        if time:
            MatchKey.parse(0x0040_0003, time)
    except InvalidQuery as exc:
        raise InvalidWorklistItem(str(exc)) from None
    if "-" in date or (time and "-" in time):
        raise InvalidWorklistItem("a scheduled start date/time is one value, not a range")
    if not _valid_date(date):
        raise InvalidWorklistItem(f"{date!r} is not a valid DA value (YYYYMMDD)")
    if time and not _valid_time(time):
        raise InvalidWorklistItem(f"{time!r} is not a valid TM value (HHMMSS.FFFFFF)")
    return {
        "accession_number": _text(dataset, "AccessionNumber"),
        "patient_id": _text(dataset, "PatientID"),
        "patient_name": _text(dataset, "PatientName"),
        "patient_name_norm": normalize_pn(_text(dataset, "PatientName")),
        "requested_procedure_id": _text(dataset, "RequestedProcedureID"),
        "scheduled_station_ae_title": _text(step, "ScheduledStationAETitle"),
        "modality": _text(step, "Modality"),
        "sps_start_date": date,
        "sps_start_time": normalize_time(time) if time else None,
        "sps_id": _text(step, "ScheduledProcedureStepID"),
    }


def _valid_date(value: str) -> bool:
    try:
        dt.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return True


def _valid_time(value: str) -> bool:
    # PS3.5 Table 6.2-1 TM: HH, HHMM, HHMMSS, HHMMSS.F{1,6}; 60 seconds allowed (leap).
    digits = normalize_time(value)
    if not digits.isdigit():
        return False
    hh, mm, ss = int(digits[0:2]), int(digits[2:4]), int(digits[4:6])
    return hh < 24 and mm < 60 and ss < 61


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    text = str(value).strip()
    return text or None


def _dataset(text: str) -> Dataset:
    return Dataset.from_json(json.loads(text))


def _item(row: Any) -> WorklistItem:
    return WorklistItem(
        id=row["id"],
        status=WorklistStatus(row["status"]),
        dataset=_dataset(row["dataset_json"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
