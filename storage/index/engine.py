"""Opening the index database: async engines for SQLite (aiosqlite) and PostgreSQL (asyncpg),
and running the Alembic migrations.

SQLite is tuned so ``arca import`` can write while the server runs: WAL journal (readers never
block the writer), a busy timeout (writers wait for each other instead of failing), and write
transactions that start with ``BEGIN IMMEDIATE`` (a deferred transaction that reads and then
writes could fail with SQLITE_BUSY without waiting when another process wrote in between).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from config.settings import StorageSettings
from storage.errors import OutOfResources, StorageError, StoreUnavailable

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any fixed 64-bit number: the PostgreSQL advisory lock that serializes schema upgrades of
# nodes starting at the same time.
_PG_MIGRATION_LOCK = 0x6172_6361_0001


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str, *, immediate: bool = False) -> AsyncEngine:
    """An engine for the index. ``immediate``: SQLite transactions take the write lock first."""
    if not is_sqlite(url):
        return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours (SQLAlchemy's documented
        # recipe for pysqlite/aiosqlite).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # DICOM matching is case-sensitive except for PN (PS3.4 C.2.2.2.1), and PN is matched
        # on a case-folded column; SQLite's LIKE must not fold ASCII case on its own.
        cursor.execute("PRAGMA case_sensitive_like=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _alembic_config(connection: Connection) -> Any:
    # Imported here: Alembic is only needed when migrating (it is slow to import).
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade_sync(connection: Connection) -> None:
    from alembic import command

    command.upgrade(_alembic_config(connection), "head")


async def upgrade_engine(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # Session-level lock: held across Alembic's own transactions, released below.
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            await conn.commit()
            try:
                await conn.run_sync(_upgrade_sync)
                await conn.commit()
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                await conn.commit()
        else:
            await conn.run_sync(_upgrade_sync)
            await conn.commit()


async def upgrade_index(settings: StorageSettings) -> None:
    """``arca db upgrade``: migrate the configured index to the newest schema."""
    engine = create_engine(settings.resolved_index_url, immediate=True)
    try:
        await upgrade_engine(engine)
    finally:
        await engine.dispose()


class IndexConflict(StoreUnavailable):
    """A constraint failed under a concurrent writer; the transaction may be retried."""


def index_error(exc: Exception) -> StorageError:
    """A database driver error in the storage tree: a full disk is OutOfResources (SQLite
    SQLITE_FULL, PostgreSQL SQLSTATE 53100 disk_full / 53200 out_of_memory), the rest
    StoreUnavailable."""
    original = getattr(exc, "orig", None) or exc
    text = str(original)
    sqlstate = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    no_space = isinstance(original, OSError) and original.errno in (errno.ENOSPC, errno.EDQUOT)
    if no_space or "database or disk is full" in text or sqlstate in ("53100", "53200"):
        return OutOfResources(f"index out of space: {text}")
    return StoreUnavailable(f"index unavailable: {text}")


@contextlib.asynccontextmanager
async def connect(engine: AsyncEngine, *, begin: bool = False) -> AsyncIterator[AsyncConnection]:
    """A connection (in a transaction when ``begin``) whose driver errors come out as the
    storage error tree: the one place they are translated."""
    try:
        if begin:
            async with engine.begin() as conn:
                yield conn
        else:
            async with engine.connect() as conn:
                yield conn
    except StorageError:
        raise
    except IntegrityError as exc:
        raise IndexConflict(f"index conflict: {exc.orig}") from exc
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        raise index_error(exc) from exc
