"""storage.worklist.WorklistStore on SQLite and on a real PostgreSQL: the same matching."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from config.settings import StorageSettings
from storage.errors import NotFound
from storage.index.engine import create_engine, upgrade_engine
from storage.query import MatchKey
from storage.worklist import (
    InvalidWorklistItem,
    WorklistItemCanceled,
    WorklistStatus,
    WorklistStore,
)
from tests.pg import fresh_database

SPS = 0x0040_0100


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[WorklistStore]:
    if request.param == "postgresql":
        settings = StorageSettings(data_dir=tmp_path, index_url=request.getfixturevalue("pg_url"))
    else:
        settings = StorageSettings(data_dir=tmp_path)
    engine = create_engine(settings.resolved_index_url, immediate=True)
    await upgrade_engine(engine)
    if request.param == "postgresql":
        async with engine.begin() as conn:
            from sqlalchemy import text

            await conn.execute(text("DELETE FROM worklist_items"))
    yield WorklistStore(engine)
    await engine.dispose()


def item(name: str, pid: str, station: str, modality: str, date: str, time: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = name
    ds.PatientID = pid
    ds.AccessionNumber = f"ACC-{pid}"
    step = Dataset()
    step.ScheduledStationAETitle = station
    step.Modality = modality
    step.ScheduledProcedureStepStartDate = date
    step.ScheduledProcedureStepStartTime = time
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def step_keys(**values: str) -> MatchKey:
    from pydicom.datadict import tag_for_keyword

    subs = tuple(MatchKey.parse(int(tag_for_keyword(k) or 0), v) for k, v in values.items())
    return MatchKey.sequence(SPS, subs)


async def ids(store: WorklistStore, *keys: MatchKey) -> list[str]:
    found = await store.search(tuple(keys))
    return [str(i.dataset.PatientID) for i in found.items]


async def test_matching(store: WorklistStore) -> None:
    await store.create(item("Müller^Hans", "P1", "CT01", "CT", "20240310", "0830"))
    await store.create(item("Mueller^Anna", "P2", "MR01", "MR", "20240310", "1400"))
    await store.create(item("Smith^John", "P3", "CT01", "CT", "20240311", "091500.25"))

    assert await ids(store, step_keys(Modality="CT")) == ["P1", "P3"]
    assert await ids(store, step_keys(ScheduledStationAETitle="CT*")) == ["P1", "P3"]
    assert await ids(store, step_keys(ScheduledProcedureStepStartDate="20240310")) == ["P1", "P2"]
    assert await ids(store, step_keys(ScheduledProcedureStepStartDate="20240311-")) == ["P3"]
    assert await ids(
        store,
        step_keys(
            ScheduledProcedureStepStartDate="20240310-20240311",
            ScheduledProcedureStepStartTime="0800-1000",
        ),
    ) == ["P1", "P3"]
    # PN: case- and accent-insensitive, wildcards.
    assert await ids(store, MatchKey.parse(0x0010_0010, "muller*")) == ["P1"]
    assert await ids(store, MatchKey.parse(0x0010_0010, "m*")) == ["P1", "P2"]
    assert await ids(store, MatchKey.parse(0x0010_0010, "SMITH^JOHN")) == ["P3"]
    assert await ids(store, MatchKey.parse(0x0010_0020, "P?")) == ["P1", "P2", "P3"]
    assert await ids(store, MatchKey.parse(0x0008_0050, "ACC-P2")) == ["P2"]
    # Universal keys constrain nothing; a key without a column is reported, not matched.
    assert await ids(store, MatchKey.parse(0x0010_0030, "")) == ["P1", "P2", "P3"]
    found = await store.search((MatchKey.parse(0x0010_0040, "F"),))
    assert found.unsupported_keys == (0x0010_0040,)


async def test_life_cycle(store: WorklistStore) -> None:
    created = await store.create(item("Doe^Jane", "L1", "CT01", "CT", "20240310", "0830"))
    assert created.status is WorklistStatus.SCHEDULED
    changed = item("Doe^Jane", "L1", "CT02", "CT", "20240312", "0830")
    await store.update(created.id, changed)
    got = await store.get(created.id)
    assert got.dataset.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == "CT02"
    assert await ids(store, step_keys(ScheduledStationAETitle="CT02")) == ["L1"]

    cancelled = await store.cancel(created.id)
    assert cancelled.status is WorklistStatus.CANCELED
    assert await ids(store, step_keys(ScheduledStationAETitle="CT02")) == []
    with_canceled = await store.search((), include_canceled=True)
    assert [i.id for i in with_canceled.items] == [created.id]
    with pytest.raises(WorklistItemCanceled):
        await store.update(created.id, changed)
    await store.delete(created.id)
    with pytest.raises(NotFound):
        await store.get(created.id)
    with pytest.raises(NotFound):
        await store.cancel("1.2.3")


async def test_invalid_items_are_not_stored(store: WorklistStore) -> None:
    no_step = item("A^B", "X1", "CT01", "CT", "20240310", "0830")
    del no_step.ScheduledProcedureStepSequence
    bad_time = item("A^B", "X2", "CT01", "CT", "20240310", "25:99")
    for bad in (no_step, bad_time):
        with pytest.raises(InvalidWorklistItem):
            await store.create(bad)
    assert (await store.search((), include_canceled=True)).items == []
