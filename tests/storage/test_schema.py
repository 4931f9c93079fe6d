"""The migrations build exactly the schema storage.index.schema describes; generated tables
are what their generator makes; the index survives several processes writing at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from pydicom.uid import generate_uid
from sqlalchemy import text

from config.settings import StorageSettings
from conformance import generate_sop_classes, sop_classes
from storage.archive import open_archive, upgrade_index
from storage.index import engine
from storage.index.schema import metadata
from storage.query import Query, QueryLevel
from tests.storage.factory import make_dataset, write

ROOT = Path(__file__).resolve().parents[2]


async def test_migrations_match_schema(storage_settings: StorageSettings) -> None:
    await upgrade_index(storage_settings)
    await upgrade_index(storage_settings)  # idempotent
    eng = engine.create_engine(storage_settings.resolved_index_url)
    try:
        async with eng.connect() as conn:

            def diff(sync_conn):  # type: ignore[no-untyped-def]
                return compare_metadata(MigrationContext.configure(sync_conn), metadata)

            assert await conn.run_sync(diff) == []
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
            assert len(version) == 1
    finally:
        await eng.dispose()


async def test_postgresql_sessions_run_without_jit(pg_database: str, tmp_path: Path) -> None:
    """JIT compilation costs more than the index's short queries take (storage.index.engine)."""
    settings = StorageSettings(data_dir=tmp_path, index_url=pg_database)
    eng = engine.create_engine(settings.resolved_index_url)
    try:
        async with eng.connect() as conn:
            assert (await conn.execute(text("SHOW jit"))).scalar_one() == "off"
    finally:
        await eng.dispose()


async def test_sqlite_index_uses_wal(tmp_path: Path) -> None:
    settings = StorageSettings(data_dir=tmp_path)
    archive = await open_archive(settings)
    await archive.close()
    assert (tmp_path / "index.sqlite").exists()
    eng = engine.create_engine(settings.resolved_index_url)
    try:
        async with eng.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 30000
    finally:
        await eng.dispose()


def test_sop_class_table_is_generated() -> None:
    path = Path(sop_classes.__file__)
    assert path.read_text(encoding="utf-8") == generate_sop_classes.render()
    assert "GENERATED" in path.read_text(encoding="utf-8")[:400]
    assert sop_classes.is_storage_sop_class("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    assert not sop_classes.is_storage_sop_class("1.2.840.10008.1.20.1")  # Storage Commitment
    assert not sop_classes.is_storage_sop_class("1.2.840.10008.1.3.10")  # DICOMDIR


_WRITER = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from config.settings import StorageSettings
from storage.archive import open_archive

async def main():
    settings = StorageSettings(data_dir=Path({data!r}), index_url={url!r})
    archive = await open_archive(settings)
    try:
        for path in sorted(Path({incoming!r}).iterdir()):
            await archive.ingest(path)
    finally:
        await archive.close()

asyncio.run(main())
"""


async def test_several_processes_ingest_one_new_study(
    storage_settings: StorageSettings, tmp_path: Path
) -> None:
    """Two processes start at once (migrating the same fresh index) and store instances of
    one new study: one patient, one study and one series row result."""
    study, series = generate_uid(), generate_uid()
    procs = []
    for n in range(2):
        incoming = tmp_path / f"in{n}"
        for i in range(8):
            ds = make_dataset(study=study, series=series, patient_id="MP", instance_number=i)
            write(ds, incoming)
        script = _WRITER.format(
            root=str(ROOT),
            data=str(storage_settings.data_dir),
            url=storage_settings.index_url,
            incoming=str(incoming),
        )
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", script, stderr=subprocess.PIPE
            )
        )
    for proc in procs:
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
    archive = await open_archive(storage_settings)
    try:
        studies = (await archive.search(Query(QueryLevel.STUDY))).matches
        assert [ds.StudyInstanceUID for ds in studies] == [study]
        assert studies[0].NumberOfStudyRelatedSeries == 1
        assert studies[0].NumberOfStudyRelatedInstances == 16
        assert len((await archive.search(Query(QueryLevel.PATIENT))).matches) == 1
        report = await archive.verify()
        assert report.ok and report.orphans == []
    finally:
        await archive.close()


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_unreachable_database_is_store_unavailable(tmp_path: Path, backend: str) -> None:
    from storage.errors import StoreUnavailable

    settings = StorageSettings(
        data_dir=tmp_path, index_url="postgresql://postgres@127.0.0.1:1/nothing"
    )
    with pytest.raises(StoreUnavailable):
        await open_archive(settings)


def test_every_required_matching_key_is_indexed() -> None:
    """PS3.18 Table 10.6.1-5 / PS3.4 C.6 required keys all have a column (or are computed /
    sequence-matched) at their level or above: none can end up as an unsupported key."""
    from conformance import attributes as A
    from storage.index.schema import MATCH_COLUMNS, REQUEST_ATTRIBUTES_SEQUENCE

    for level, tags in A.REQUIRED_MATCHING_KEYS.items():
        for tag in tags:
            column = MATCH_COLUMNS.get(tag)
            if column is not None:
                assert column.level in A.levels_up_to(level), (level, f"{tag:08X}")
                continue
            assert tag in A.COMPUTED[level] or tag == REQUEST_ATTRIBUTES_SEQUENCE, f"{tag:08X}"


async def test_0002_backfills_study_patient_columns(storage_settings: StorageSettings) -> None:
    """An index created at revision 0001, with data, upgrades in place."""
    eng = engine.create_engine(storage_settings.resolved_index_url, immediate=True)
    try:

        def to_0001(sync_conn):  # type: ignore[no-untyped-def]
            from alembic import command

            metadata.drop_all(sync_conn)
            sync_conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
            command.upgrade(engine._alembic_config(sync_conn), "0001")

        async with eng.connect() as conn:
            await conn.run_sync(to_0001)
            await conn.commit()
        async with eng.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO patients (id, patient_id, issuer_of_patient_id, patient_name, "
                    "patient_name_norm, attributes_json, created_at) "
                    "VALUES (1, 'P9', '', 'Old^Name', 'OLD^NAME', '{}', 'x')"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO studies (id, study_uid, patient_pk, attributes_json, created_at) "
                    "VALUES (1, '1.2.3', 1, '{}', 'x')"
                )
            )
        await engine.upgrade_engine(eng)
        async with eng.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT patient_id, patient_name_norm FROM studies WHERE id = 1")
                )
            ).one()
            assert tuple(row) == ("P9", "OLD^NAME")
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
            assert version == "0004"  # every later migration ran too
    finally:
        # Leave an empty index behind for the module's other tests.
        async with eng.begin() as conn:
            await conn.execute(text("DELETE FROM studies"))
            await conn.execute(text("DELETE FROM patients"))
        await eng.dispose()


@pytest.mark.parametrize("level", list(QueryLevel))
def test_supported_matching_keys_are_what_compile_accepts(level: QueryLevel) -> None:
    from pydicom.datadict import dictionary_VR

    from storage.index.compile import compile_query, supported_matching_keys
    from storage.query import MatchKey

    supported = supported_matching_keys(level)
    for tag in supported:
        if dictionary_VR(tag) == "SQ":
            key = MatchKey.sequence(tag, (MatchKey.parse(0x0040_0009, "X"),))
        elif dictionary_VR(tag) in ("DA", "DT"):
            key = MatchKey.parse(tag, "20240101")
        elif dictionary_VR(tag) == "TM":
            key = MatchKey.parse(tag, "1010")
        elif dictionary_VR(tag) == "UI":
            key = MatchKey.parse(tag, "1.2.3")
        elif dictionary_VR(tag) == "IS":
            key = MatchKey.parse(tag, "1")
        else:
            key = MatchKey.parse(tag, "X")
        assert compile_query(Query(level, keys=(key,))).unsupported == [], f"{tag:08X}"
    assert compile_query(Query(level, keys=(MatchKey.parse(0x0010_4000, "x"),))).unsupported == [
        0x0010_4000
    ]
