"""Opening the index database: async engines for SQLite (aiosqlite) and PostgreSQL (asyncpg),
the ingest writer (:class:`IngestIndex`), and running the Alembic migrations.

SQLite is tuned so ``arca import`` can write while the server runs: WAL journal (readers never
block the writer), a busy timeout (writers wait for each other instead of failing), and write
transactions that start with ``BEGIN IMMEDIATE`` (a deferred transaction that reads and then
writes could fail with SQLITE_BUSY without waiting when another process wrote in between).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
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


_T = TypeVar("_T")
READ_ONLY = "arca_read_only"
"""Execution option: this SQLite connection's transactions only read (plain BEGIN)."""


def create_engine(url: str, *, immediate: bool = False) -> AsyncEngine:
    """An engine for the index. ``immediate``: SQLite transactions take the write lock first."""
    if not is_sqlite(url):
        # JIT compiles plans whose estimated cost is high (a study list over a freshly
        # loaded index): ~11 ms per execution measured, for queries that run in 2–10 ms.
        return create_async_engine(
            url,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=10,
            connect_args={"server_settings": {"jit": "off"}},
        )
    _make_parent(url)
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    _tune_sqlite(engine.sync_engine, immediate=immediate)
    return engine


def create_sqlite_writer(url: str) -> Engine:
    """A synchronous pysqlite engine for ingest transactions, which run wholly in one worker
    thread (aiosqlite costs a thread round trip per statement). Write transactions start
    with ``BEGIN IMMEDIATE``; connections with the :data:`READ_ONLY` option use ``BEGIN``."""
    _make_parent(url)
    engine = create_sync_engine(
        url.replace("sqlite+aiosqlite:", "sqlite:"),
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )
    _tune_sqlite(engine, immediate=True)
    return engine


def _make_parent(url: str) -> None:
    path = sqlite_path(url)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _tune_sqlite(engine: Engine, *, immediate: bool) -> None:
    @event.listens_for(engine, "connect")
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

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = immediate and not conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


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
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            # Session-level lock: held across Alembic's own transactions, released below.
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            await conn.commit()
            try:
                await conn.run_sync(_upgrade_sync)
                await conn.commit()
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                await conn.commit()
            return
    path = sqlite_path(str(engine.url))
    async with _sqlite_migration_lock(path):
        # SQLite can answer SQLITE_BUSY without waiting for its busy timeout (a connection
        # that another process's last-connection cleanup or WAL recovery holds off, see
        # sqlite.org/wal.html §"Sometimes queries return SQLITE_BUSY"). The upgrade is
        # idempotent, so it is retried for as long as the busy timeout would have waited.
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                async with engine.connect() as conn:
                    await conn.run_sync(_upgrade_sync)
                    await conn.commit()
                return
            except DBAPIError as exc:
                if "database is locked" not in str(exc.orig) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)


def sqlite_path(url: str) -> str:
    """The file of a SQLite URL ("" for an in-memory database)."""
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return "" if path == ":memory:" else path


@contextlib.asynccontextmanager
async def _sqlite_migration_lock(path: str) -> AsyncIterator[None]:
    """Processes opening one SQLite index at once migrate it one after the other (the
    counterpart of PostgreSQL's advisory lock): an exclusive flock on a file beside it."""
    if not path:
        yield
        return
    fd = os.open(f"{path}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
    if sqlstate in ("40001", "40P01"):
        # serialization_failure / deadlock_detected: the transaction may simply be retried.
        return IndexConflict(f"index conflict: {text}")
    return StoreUnavailable(f"index unavailable: {text}")


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Driver errors raised inside come out as the storage error tree: the one place they
    are translated, for :func:`connect` and :class:`IngestIndex` alike."""
    try:
        yield
    except StorageError:
        raise
    except IntegrityError as exc:
        raise IndexConflict(f"index conflict: {exc.orig}") from exc
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        raise index_error(exc) from exc


class IngestIndex:
    """Runs an ingest step, a synchronous function of a :class:`Connection`, as one
    transaction: on SQLite wholly in one worker thread on a pysqlite connection; on
    PostgreSQL on the loop through the asyncpg connection (``run_sync``), whose round trips
    are network waits the loop overlaps with other work. Driver errors come out as the
    storage error tree."""

    def __init__(self, write_engine: AsyncEngine, sqlite_writer: Engine | None) -> None:
        self._async = write_engine
        self._sqlite = sqlite_writer

    @staticmethod
    def _run_sqlite(engine: Engine, fn: Callable[[Connection], _T], write: bool) -> _T:
        with _translated(), engine.connect() as conn:
            if not write:
                conn = conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                return fn(conn)

    async def run(self, fn: Callable[[Connection], _T], *, write: bool = True) -> _T:
        """``fn(conn)`` in one transaction, committed when it returns (when ``write``)."""
        if self._sqlite is not None:
            return await asyncio.to_thread(self._run_sqlite, self._sqlite, fn, write)
        with _translated():
            async with self._async.begin() as conn:
                return await conn.run_sync(fn)

    def dispose(self) -> None:
        if self._sqlite is not None:
            self._sqlite.dispose()


@contextlib.asynccontextmanager
async def connect(engine: AsyncEngine, *, begin: bool = False) -> AsyncIterator[AsyncConnection]:
    """A connection (in a transaction when ``begin``) whose driver errors come out as the
    storage error tree (:func:`_translated`, as for :class:`IngestIndex`)."""
    with _translated():
        if begin:
            async with engine.begin() as conn:
                yield conn
        else:
            async with engine.connect() as conn:
                yield conn
