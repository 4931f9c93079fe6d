"""The study list at scale (issue #5), on SQLite and PostgreSQL: one SELECT per page with the
computed attributes of that page's rows, DICOM JSON rendered from the stored attributes, the
indexes of migration 0004 (built on an index that already holds data, and used)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import event, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from config.settings import StorageSettings
from conformance import attributes as A
from storage.archive import Archive
from storage.index import engine as index_engine
from storage.index.compile import compile_query
from storage.index.schema import instances
from storage.query import MatchKey, Query, QueryLevel, QueryResult
from tests.storage.factory import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, make_dataset, write

MIGRATION_0004_INDEXES = {
    "ix_studies_list_order",
    "ix_series_study_modality",
    "ix_instances_cold",
    "ix_patients_name_pattern",
}


class StatementCounter:
    """Counts the SQL statements an engine sends (cursor executions)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.sync_engine
        self.statements: list[str] = []

    def _count(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            self.statements.append(statement)

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)


async def _ingest(archive: Archive, tmp_path: Path, datasets: list[Dataset]) -> None:
    for ds in datasets:
        await archive.ingest(write(ds, tmp_path / "in"))


def _study(uid: str, date: str, series: list[tuple[str, int]], **extra: Any) -> list[Dataset]:
    """Instances of one study: ``series`` lists (modality, number of instances)."""
    out = []
    for number, (modality, count) in enumerate(series, start=1):
        series_uid = generate_uid()
        for i in range(count):
            out.append(
                make_dataset(
                    study=uid,
                    series=series_uid,
                    study_date=date,
                    modality=modality,
                    series_number=number,
                    instance_number=i + 1,
                    patient_id=f"P-{uid[-6:]}",
                    sop_class=MR_IMAGE_STORAGE if modality == "MR" else CT_IMAGE_STORAGE,
                    **extra,
                )
            )
    return out


@pytest.fixture
def three_studies() -> Iterator[tuple[str, str, str, list[Dataset]]]:
    newest, middle, oldest = generate_uid(), generate_uid(), generate_uid()
    datasets = [
        *_study(newest, "20240301", [("CT", 2), ("CT", 1), ("SR", 1)]),
        *_study(middle, "20240201", [("MR", 3)]),
        *_study(oldest, "20240101", [("US", 1), ("CT", 2)]),
    ]
    yield newest, middle, oldest, datasets


async def test_a_study_list_page_is_one_statement_with_its_own_counts(
    archive: Archive, tmp_path: Path, three_studies: tuple[str, str, str, list[Dataset]]
) -> None:
    newest, middle, oldest, datasets = three_studies
    await _ingest(archive, tmp_path, datasets)
    with StatementCounter(archive._read) as counter:
        page = await archive.search(Query(QueryLevel.STUDY, limit=2, offset=1))
    # Counts, ModalitiesInStudy and InstanceAvailability come with the page's rows.
    assert len(counter.statements) == 1, counter.statements
    assert [ds.StudyInstanceUID for ds in page.matches] == [middle, oldest]
    middle_ds, oldest_ds = page.matches
    assert (middle_ds.NumberOfStudyRelatedSeries, middle_ds.NumberOfStudyRelatedInstances) == (1, 3)
    assert (oldest_ds.NumberOfStudyRelatedSeries, oldest_ds.NumberOfStudyRelatedInstances) == (2, 3)
    assert middle_ds.ModalitiesInStudy == "MR"
    assert list(oldest_ds.ModalitiesInStudy) == ["CT", "US"]
    assert {ds.InstanceAvailability for ds in page.matches} == {"ONLINE"}

    first = await archive.search(Query(QueryLevel.STUDY, limit=1))
    [study] = first.objects
    assert study["0020000D"] == {"vr": "UI", "Value": [newest]}
    # Three series, two of them CT: each modality once, in order (PS3.18 Table 10.6.3-3).
    assert study["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert study["00201206"] == {"vr": "IS", "Value": [3]}
    assert study["00201208"] == {"vr": "IS", "Value": [4]}
    assert study["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}

    # SOPClassesInStudy aggregates instances: asked for, it is the one extra statement.
    with StatementCounter(archive._read) as counter:
        classes = await archive.search(
            Query(QueryLevel.STUDY, limit=1, include=frozenset({A.SOP_CLASSES_IN_STUDY}))
        )
    assert len(counter.statements) == 2
    assert classes.matches[0].SOPClassesInStudy == CT_IMAGE_STORAGE


async def test_series_and_patient_pages_are_one_statement(
    archive: Archive, tmp_path: Path, three_studies: tuple[str, str, str, list[Dataset]]
) -> None:
    newest, _, _, datasets = three_studies
    await _ingest(archive, tmp_path, datasets)
    scope = (MatchKey.parse(0x0020_000D, newest),)
    with StatementCounter(archive._read) as counter:
        series = await archive.search(
            Query(QueryLevel.SERIES, keys=scope, include=frozenset({A.INSTANCE_AVAILABILITY}))
        )
        patients = await archive.search(
            Query(
                QueryLevel.PATIENT,
                include=frozenset(A.COMPUTED[A.PATIENT]),
                patient_root=True,
            )
        )
    assert len(counter.statements) == 2
    assert [ds.NumberOfSeriesRelatedInstances for ds in series.matches] == [2, 1, 1]
    assert {ds.InstanceAvailability for ds in series.matches} == {"ONLINE"}
    counts = sorted(
        (
            ds.NumberOfPatientRelatedStudies,
            ds.NumberOfPatientRelatedSeries,
            ds.NumberOfPatientRelatedInstances,
        )
        for ds in patients.matches
    )
    assert counts == [(1, 1, 3), (1, 2, 3), (1, 3, 4)]


async def test_json_is_what_the_datasets_give(archive: Archive, tmp_path: Path) -> None:
    """The JSON rendered from stored attributes equals the pydicom rendering of the same
    result (what C-FIND sends): every VR kind, sequences, empty keys, includefield=all."""
    request = Dataset()
    request.ScheduledProcedureStepID = "SPS1"
    request.RequestedProcedureID = "RP1"
    study = generate_uid()
    datasets = _study(
        study,
        "20240301",
        [("CT", 2)],
        RequestAttributesSequence=[request],
        PatientBirthDate="19700101",
        StudyDescription="Head",
        PerformedProcedureStepStartDate="20240301",
    )
    await _ingest(archive, tmp_path, datasets)
    include = frozenset({0x0008_1030, 0x0010_4000, 0x0040_0275, 0x0008_0062})
    empty_key = MatchKey.parse(0x0010_2160, "")  # EthnicGroup: universal, absent
    for level in QueryLevel:
        for query in (
            Query(level, keys=(empty_key,), include=include, patient_root=True),
            Query(level, include_all=True, patient_root=True),
        ):
            result = await archive.search(query)
            assert result.objects
            assert QueryResult(matches=result.matches).objects == result.objects, level
    [with_empty] = (
        await archive.search(Query(QueryLevel.STUDY, keys=(empty_key,), include=include))
    ).objects
    assert with_empty["00102160"] == {"vr": "SH"}  # a matching key is returned even empty
    assert with_empty["00104000"] == {"vr": "LT"}
    assert with_empty["00081030"] == {"vr": "LO", "Value": ["Head"]}


async def _explain(engine: AsyncEngine, statement: Any, settings: dict[str, str]) -> str:
    """The plan of ``statement`` as it is executed: with bound parameters, not literals."""
    compiled = statement.compile(
        dialect=engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            for name, value in settings.items():
                await conn.execute(text(f"SET {name} = {value}"))
            prefix = "EXPLAIN "
        else:
            prefix = "EXPLAIN QUERY PLAN "
        rows = (await conn.exec_driver_sql(prefix + str(compiled), params)).all()
        await conn.rollback()
    return "\n".join(" ".join(str(v) for v in row) for row in rows)


async def test_the_study_list_walks_its_order_index(
    archive: Archive, tmp_path: Path, three_studies: tuple[str, str, str, list[Dataset]]
) -> None:
    """The default study order is exactly the expression of ix_studies_list_order, so the
    page is read off the index (no sort of every study); InstanceAvailability probes the
    partial index of cold instances."""
    await _ingest(archive, tmp_path, three_studies[3])
    compiled = compile_query(Query(QueryLevel.STUDY, limit=101))
    # A handful of rows: PostgreSQL would rather sort them. Forbidding sorts and sequential
    # scans shows whether the index *can* serve the order (a parameter in the expression,
    # as before 0004, cannot).
    plan = await _explain(
        archive._read, compiled.matching, {"enable_sort": "off", "enable_seqscan": "off"}
    )
    assert "ix_studies_list_order" in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
    if archive._read.dialect.name == "postgresql":
        plan = await _explain(archive._read, compiled.statement, {"enable_seqscan": "off"})
        assert "ix_instances_cold" in plan, plan


async def test_migration_0004_upgrades_an_index_with_data(
    archive: Archive,
    storage_settings: StorageSettings,
    tmp_path: Path,
    three_studies: tuple[str, str, str, list[Dataset]],
) -> None:
    """An index at revision 0003 holding studies upgrades in place; downgrade works too."""
    await _ingest(archive, tmp_path, three_studies[3])
    eng = index_engine.create_engine(storage_settings.resolved_index_url, immediate=True)

    async def indexes() -> set[str]:
        if eng.dialect.name == "postgresql":
            sql = "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'index'"
        async with eng.connect() as conn:
            return {str(name) for name in (await conn.execute(text(sql))).scalars()}

    def to_0003(sync_conn: Any) -> None:
        from alembic import command

        command.downgrade(index_engine._alembic_config(sync_conn), "0003")

    try:
        assert await indexes() >= MIGRATION_0004_INDEXES
        async with eng.connect() as conn:
            await conn.run_sync(to_0003)
            await conn.commit()
        assert not MIGRATION_0004_INDEXES & await indexes()
        # A study goes cold while at 0003: the partial index must pick it up when built.
        async with eng.begin() as conn:
            await conn.execute(
                update(instances)
                .where(instances.c.sop_uid == three_studies[3][-1].SOPInstanceUID)
                .values(tier="cold")
            )
        await index_engine.upgrade_engine(eng)
        assert await indexes() >= MIGRATION_0004_INDEXES
        async with eng.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        assert version == "0004"
    finally:
        await eng.dispose()
    result = await archive.search(Query(QueryLevel.STUDY))
    assert [ds.StudyInstanceUID for ds in result.matches] == list(three_studies[:3])
    assert [ds.InstanceAvailability for ds in result.matches] == ["ONLINE", "ONLINE", "NEARLINE"]
    assert [ds.NumberOfStudyRelatedInstances for ds in result.matches] == [4, 3, 3]
