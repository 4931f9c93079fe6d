"""Fixtures for storage tests: an Archive on SQLite and on a real PostgreSQL database.

PostgreSQL runs on 127.0.0.1:5432 (trust auth). Each test module gets its own database
``arca_test_<hex>``, dropped afterwards; each test starts from empty tables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from config.settings import OverwritePolicy, StorageSettings
from storage.archive import Archive, open_archive
from tests.pg import fresh_database, truncate_tables


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test module; yields its URL."""
    with fresh_database() as url:
        yield url


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
        await truncate_tables(storage_settings.index_url)
    opened = await open_archive(storage_settings)
    try:
        yield opened
    finally:
        await opened.close()
