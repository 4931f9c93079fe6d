"""The real PostgreSQL on 127.0.0.1:5432 (trust auth) for tests: a throwaway database each,
and emptying an index's tables between tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

PG_HOST = "postgresql://postgres@127.0.0.1:5432"
PG_ADMIN_DSN = f"{PG_HOST}/postgres"


async def _admin_async(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def admin(sql: str) -> None:
    """Run one statement on the admin database; safe inside a running event loop (a fixture
    may be set up from one), so it runs in a thread of its own."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _admin_async(sql)).result()


@contextlib.contextmanager
def fresh_database(prefix: str = "arca_test", *, skip_if_absent: bool = True) -> Iterator[str]:
    """A new, empty database (its URL), dropped afterwards. Without a PostgreSQL server the
    test is skipped, or fails when ``skip_if_absent`` is False."""
    name = f"{prefix}_{uuid.uuid4().hex}"
    try:
        admin(f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        if not skip_if_absent:
            raise
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 not available: {exc}")
    try:
        yield f"{PG_HOST}/{name}"
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def truncate_tables(url: str) -> None:
    """Empty every table of the index at ``url`` but the migration version (none yet: no-op)."""
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
