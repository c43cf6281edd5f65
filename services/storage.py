"""Database per service: each demo service keeps its tables in a database of its own,
behind a ``choreo.sql.Store`` (its inbox and outbox live in the same database).

* ``CHOREO_DEMO_DB`` unset: one SQLite file per service, ``<data dir>/<service>.db``
  (``CHOREO_DEMO_DATA``, default ``./.demo-data``).
* ``CHOREO_DEMO_DB=postgresql+asyncpg://user@host:5432/``: one database per service on that
  server, ``choreo_demo_<service>``, created when missing (through the server's ``postgres``
  database). A database name in the URL replaces the prefix: ``.../shop`` gives
  ``shop_inventory``, ``shop_catalog`` and ``shop_wishlist``.

A real service creates its tables in a deploy step (migrations: Alembic, with
``store.metadata`` beside its own). The demo's stores do it themselves, once per process,
before their first transaction and before their relay starts, so that
``choreo run services.inventory:service`` needs no such step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from choreo.sql import OutboxStatus, Store, Transaction

log = logging.getLogger("services.storage")

Seed = Mapping[sa.Table, Sequence[Mapping[str, Any]]]
"""Rows a service's tables start with: added when missing, never changed afterwards."""

DEFAULT_PREFIX = "choreo_demo"
PREPARE_ATTEMPTS = 5
SQLITE_BUSY_TIMEOUT = 30.0  # seconds a SQLite writer waits for the lock before failing


def data_dir() -> Path:
    """``CHOREO_DEMO_DATA``, default ``./.demo-data``."""
    return Path(os.environ.get("CHOREO_DEMO_DATA", ".demo-data"))


def server_url() -> URL | None:
    """``CHOREO_DEMO_DB`` as a SQLAlchemy URL (asyncpg driver), or None: SQLite files."""
    value = os.environ.get("CHOREO_DEMO_DB", "").strip()
    if not value:
        return None
    url = make_url(value)
    if url.get_backend_name() != "postgresql":
        raise ValueError(
            f"CHOREO_DEMO_DB={url.render_as_string(hide_password=True)!r}: expected a "
            "PostgreSQL server, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/"
        )
    return url.set(drivername="postgresql+asyncpg")


def database_name(server: URL, service: str) -> str:
    """``service``'s database on ``server``: ``<prefix>_<service>``."""
    name = f"{server.database or DEFAULT_PREFIX}_{service}"
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):  # it goes into CREATE DATABASE
        raise ValueError(f"CHOREO_DEMO_DB: {name!r} is no database name for the demo")
    return name


def location() -> str:
    """Where the demo's databases are, to print (no password)."""
    server = server_url()
    if server is None:
        return f"{data_dir()}/"
    where = server.set(database="").render_as_string(hide_password=True)
    return f"{where} (databases {server.database or DEFAULT_PREFIX}_*)"


def engine_for(service: str) -> AsyncEngine:
    """The engine of ``service``'s own database (nothing is connected yet)."""
    server = server_url()
    if server is not None:
        return create_async_engine(server.set(database=database_name(server, service)))
    path = data_dir() / f"{service}.db"
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{path}", connect_args={"timeout": SQLITE_BUSY_TIMEOUT}
    )

    @sa.event.listens_for(engine.sync_engine, "connect")
    def write_ahead_log(dbapi_connection: Any, _: Any) -> None:
        # write-ahead log: readers (the GetAvailability responder, the demo's tables) never
        # wait for the writer, nor the writer for them. synchronous=NORMAL: a commit is not
        # flushed to disk at once (a process crash loses nothing; a power cut may lose the
        # last commits, never consistency): the demo's commits come three per event
        # (the handling, the relay's claim, its mark), and fsyncs made them crawl
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def insert(session: AsyncSession | AsyncConnection, table: sa.Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` (``on_conflict_do_nothing``/``_do_update``) in the
    dialect of ``session``'s database: the same statements run on PostgreSQL and SQLite."""
    bind = session.bind if isinstance(session, AsyncSession) else session
    dialect = bind.dialect.name if bind is not None else ""
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


class DemoStore(Store):
    """The store of one demo service, on :func:`engine_for` its database: it creates the
    database (PostgreSQL), choreo's tables, the service's ``tables`` and their ``seed``
    rows, once, before its first transaction (``transaction``, ``handling``) and before its
    relay's first round."""

    def __init__(self, service: str, tables: sa.MetaData, seed: Seed | None = None) -> None:
        super().__init__(engine_for(service), name=service)
        self.service = service
        self.tables = tables
        self.seed = dict(seed or {})
        self._prepared = False
        self._preparing = asyncio.Lock()

    @property
    def concurrency(self) -> int | None:
        """Handlers at once that suit the database, for ``Service(concurrency=...)``: one on
        SQLite, where one transaction writes at a time and a handler's transaction begins
        with its inbox row (the others would only wait for its lock); the bus's default on
        PostgreSQL."""
        return None if self.postgres else 1

    async def prepare(self) -> None:
        """Create what is missing (idempotent; concurrent callers wait for the first)."""
        if self._prepared:
            return
        async with self._preparing:
            attempt = 0
            while not self._prepared:
                attempt += 1
                try:
                    await self._create()
                except sa.exc.DBAPIError as exc:
                    # another process (a worker, the HTTP app) created the same database or
                    # table meanwhile; CREATE DATABASE also fails while one copies template1
                    if attempt == PREPARE_ATTEMPTS:
                        raise
                    log.debug("%s: creating its tables: %s; again", self, exc)
                    await asyncio.sleep(0.2 * attempt)
                else:
                    self._prepared = True

    async def _create(self) -> None:
        name = self.engine.url.database or ""
        if self.postgres:

            def create_database(connection: sa.Connection) -> None:
                exists = sa.text("SELECT 1 FROM pg_database WHERE datname = :name")
                if connection.scalar(exists, {"name": name}) is None:
                    connection.exec_driver_sql(f'CREATE DATABASE "{name}"')

            await _on_server(self.engine.url, create_database)
        else:
            await asyncio.to_thread(_make_directory, name)
        await self.create_tables()
        async with self.engine.begin() as connection:
            await connection.run_sync(self.tables.create_all)
            for table, rows in self.seed.items():
                if rows:
                    statement = insert(connection, table).on_conflict_do_nothing()
                    await connection.execute(statement, [dict(row) for row in rows])

    async def drop(self) -> None:
        """Delete the database (the SQLite file, or the PostgreSQL database, whoever is
        connected to it) and everything in it; the next use creates it again, seeded."""
        await self.engine.dispose()
        if self.postgres:
            name = self.engine.url.database
            await _on_server(
                self.engine.url,
                lambda c: c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'),
            )
        else:
            await asyncio.to_thread(_delete_sqlite_files, self.engine.url.database)
        self._prepared = False

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        await self.prepare()
        async with super().transaction() as tx:
            yield tx

    @contextlib.asynccontextmanager
    async def handling(self, service: str, message_id: str | None) -> AsyncIterator[Transaction]:
        await self.prepare()
        async with super().handling(service, message_id) as tx:
            yield tx

    async def status(self) -> OutboxStatus:
        await self.prepare()
        return await super().status()

    def relay(self, send: Any, observer: Any) -> Any:
        return _RelayOnceReady(self, lambda: Store.relay(self, send, observer))


class _RelayOnceReady:
    """Starts the store's relay once ``prepare`` succeeded (retried while the database is
    unreachable); ``stop`` stops whichever is running."""

    def __init__(self, store: DemoStore, start: Callable[[], Any]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._start(store, start))

    async def _start(self, store: DemoStore, start: Callable[[], Any]) -> Any:
        wait = 0.5
        while True:
            try:
                await store.prepare()
            except Exception as exc:
                log.warning("%s: database not ready (%s); retrying in %.1fs", store, exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 30.0)
            else:
                return start()

    async def stop(self) -> None:
        self._task.cancel()  # no effect once the relay runs
        await asyncio.wait({self._task})
        if not self._task.cancelled() and self._task.exception() is None:
            await self._task.result().stop()


async def _on_server(url: URL, work: Callable[[sa.Connection], Any]) -> Any:
    """Run ``work`` on a connection to the server of ``url`` (its ``postgres`` database),
    outside of any transaction: ``CREATE``/``DROP DATABASE`` cannot run in one."""
    engine = create_async_engine(
        url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


def _make_directory(database: str | None) -> None:
    Path(database or ".").parent.mkdir(parents=True, exist_ok=True)


def _delete_sqlite_files(database: str | None) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
