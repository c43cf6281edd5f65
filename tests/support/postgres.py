"""Throw-away PostgreSQL databases on the test server, for tests of the database store.

The suite's server is ``CHOREO_TEST_POSTGRES_URL`` (default :data:`DEFAULT_URL`, which
``.ci/run`` makes sure of). Each test gets a database of its own, created on that server and
dropped after it, so tests never see each other's tables::

    async with throwaway_database(server_url) as url:
        # url == "postgresql+asyncpg://postgres@127.0.0.1:5432/choreo_t_0123456789ab"
        engine = create_async_engine(url)
        ...
    # the database is dropped WITH (FORCE): connections the test left open are ended

:func:`probe` says in one line why no PostgreSQL is usable at a URL (nothing listens, not
PostgreSQL, refused login, missing database), or returns None; the fixtures in
``tests/conftest.py`` skip on that reason, or fail in CI.

asyncpg is used directly (not SQLAlchemy): ``CREATE``/``DROP DATABASE`` cannot run inside a
transaction, and asyncpg runs a lone statement outside of one. A session killed before its
teardown (SIGKILL, ``timeout``) leaves its ``choreo_t_*`` database behind; names never repeat,
so that only costs disk space (``psql -c '\\l choreo_t_*'`` lists them).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/choreo_test"
PREFIX = "choreo_t_"
SQLALCHEMY_SCHEME = "postgresql+asyncpg"
TIMEOUT = 10.0  # seconds, for one connection attempt or one CREATE/DROP DATABASE
CREATE_ATTEMPTS = 5  # CREATE DATABASE fails while another session sits in template1
_NAME = re.compile(rf"{PREFIX}[0-9a-f]{{12}}\Z")
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)  # the first message a libpq client may send


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 5432}"


def _speaks_postgres(url: str, timeout: float) -> str | None:
    """None if a PostgreSQL server answers an SSLRequest at ``url``'s host and port."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 5432)
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(_SSL_REQUEST)
            answer = sock.recv(1)
    except OSError as exc:
        return f"nothing answers at {_where(url)} ({exc})"
    if answer not in (b"S", b"N"):  # willing or not to speak TLS: either way, PostgreSQL
        return f"{_where(url)} does not speak the PostgreSQL protocol"
    return None


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=TIMEOUT)


async def aprobe(url: str, timeout: float = 5.0) -> str | None:
    """None if PostgreSQL at ``url`` accepts a login to its database, else why not."""
    problem = await asyncio.to_thread(_speaks_postgres, url, timeout)
    if problem is not None:
        return problem
    parts = urlsplit(url)
    who = f"user {parts.username or 'postgres'!r}, database {parts.path.lstrip('/')!r}"
    try:
        connection = await asyncpg.connect(url, timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"PostgreSQL at {_where(url)} refuses {who}: {first_line}"
    await connection.close()
    return None


def probe(url: str, timeout: float = 5.0) -> str | None:
    """:func:`aprobe` for code outside an event loop (session fixtures)."""
    return asyncio.run(aprobe(url, timeout))


def database_url(server_url: str, name: str, scheme: str = SQLALCHEMY_SCHEME) -> str:
    """``server_url`` (user, password, host, port, query kept) pointed at database ``name``."""
    parts = urlsplit(server_url)
    return urlunsplit((scheme, parts.netloc, f"/{name}", parts.query, ""))


def _checked(name: str) -> str:
    if not _NAME.match(name):  # the name goes into SQL: only names made here
        raise ValueError(f"not a throw-away database name: {name!r}")
    return f'"{name}"'


async def create_database(server_url: str) -> str:
    """Create a database ``choreo_t_<12 hex>`` on the server; return its name."""
    name = f"{PREFIX}{secrets.token_hex(6)}"
    connection = await _connect(server_url)
    try:
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                await connection.execute(f"CREATE DATABASE {_checked(name)}", timeout=TIMEOUT)
            except asyncpg.ObjectInUseError:  # "source database template1 is being accessed"
                if attempt == CREATE_ATTEMPTS:
                    raise
                await asyncio.sleep(0.2 * attempt)
            else:
                break
    finally:
        await connection.close()
    return name


async def drop_database(server_url: str, name: str) -> None:
    """Drop the database, ending its connections first (``WITH (FORCE)``); no error if gone."""
    connection = await _connect(server_url)
    try:
        await connection.execute(
            f"DROP DATABASE IF EXISTS {_checked(name)} WITH (FORCE)", timeout=TIMEOUT
        )
    finally:
        await connection.close()


async def database_exists(server_url: str, name: str) -> bool:
    connection = await _connect(server_url)
    try:
        found = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await connection.close()
    return found == 1


@asynccontextmanager
async def throwaway_database(
    server_url: str, scheme: str = SQLALCHEMY_SCHEME
) -> AsyncIterator[str]:
    """A fresh database for the block; yields its URL (SQLAlchemy async by default) and drops
    it afterwards, whatever the block did."""
    name = await create_database(server_url)
    try:
        yield database_url(server_url, name, scheme)
    finally:
        await drop_database(server_url, name)
