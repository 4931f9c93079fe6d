"""Fixtures for storage tests: an Archive on SQLite and on a real PostgreSQL database.

PostgreSQL runs on 127.0.0.1:5432 (trust auth). Each test module gets its own database
``arca_test_<hex>``, dropped afterwards; each test starts from empty tables.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from config.settings import OverwritePolicy, StorageSettings
from storage.archive import Archive, open_archive

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


async def _pg_admin_async(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_admin(sql: str) -> None:
    # In a thread of its own: the fixture may be requested from inside a running loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _pg_admin_async(sql)).result()


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test module; yields its URL."""
    name = f"arca_test_{uuid.uuid4().hex}"
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 not available: {exc}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _truncate_pg(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname='public' "
            "AND tablename <> 'alembic_version'"
        )
        if tables:
            names = ", ".join(f'"{t["tablename"]}"' for t in tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage_settings(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> StorageSettings:
    policy = getattr(request, "param", OverwritePolicy.REJECT)
    if backend == "postgresql":
        url = request.getfixturevalue("pg_database")
        return StorageSettings(data_dir=tmp_path / "data", index_url=url, overwrite_policy=policy)
    return StorageSettings(data_dir=tmp_path / "data", overwrite_policy=policy)


@pytest.fixture
async def archive(storage_settings: StorageSettings) -> AsyncIterator[Archive]:
    if storage_settings.index_url is not None:
        # Migrate first (a no-op after the module's first test), then empty the tables.
        first = await open_archive(storage_settings)
        await first.close()
        await _truncate_pg(storage_settings.index_url)
    opened = await open_archive(storage_settings)
    try:
        yield opened
    finally:
        await opened.close()
