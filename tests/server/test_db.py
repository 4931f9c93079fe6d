"""``arca db upgrade`` and ``arca serve`` on PostgreSQL (a database of the test's own)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import StartArca, run_arca
from tests.data import small_ct, uids_of
from tests.pg import fresh_database
from tests.system.http import instance_uids, stow


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def test_db_upgrade_on_sqlite_is_idempotent(tmp_path: Path) -> None:
    for _ in range(2):
        result = run_arca("db", "upgrade", "--data", str(tmp_path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "the index schema is up to date" in result.stdout
    assert (tmp_path / "index.sqlite").is_file()


@pytest.mark.postgres
def test_db_upgrade_then_serve_on_postgresql(
    pg_url: str, start_arca: StartArca, tmp_path: Path
) -> None:
    result = run_arca("db", "upgrade", "--index", pg_url, "--data", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"studies", "series", "instances", "alembic_version"} <= asyncio.run(_tables(pg_url))

    arca = start_arca("--index", pg_url)
    assert "PostgreSQL index at 127.0.0.1:5432/" in arca.log_text()
    assert not (arca.data_dir / "index.sqlite").exists()
    data = small_ct()
    study, _, sop = uids_of(data)
    with httpx.Client(timeout=60) as client:
        assert stow(client, arca.dicomweb_url, [data]).status_code == 200
        assert instance_uids(client, arca.dicomweb_url, study) == {sop}
    verify = arca.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "1 instances checked" in verify.stdout


def test_db_upgrade_reports_an_unreachable_index(tmp_path: Path) -> None:
    result = run_arca(
        "db", "upgrade", "--index", "postgresql://nobody@127.0.0.1:1/none", "--data", str(tmp_path)
    )
    assert result.returncode == 1
    assert "arca db upgrade: index unavailable" in result.stderr
