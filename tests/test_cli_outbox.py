"""`choreo outbox status`, run as a subprocess against a store's database (no broker)."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from choreo import Event
from choreo.cli.outbox import age
from choreo.observability.observer import Observer
from choreo.sql import Store
from choreo.sql.relay import Relay
from choreo.transports.base import Message

from .test_cli import choreo_cmd

STORE = "tests.fixtures.outbox_store:store"


class Shipped(Event):
    order: str


class Refused(Event):
    order: str


def run(url: str, *args: str, target: str = STORE) -> subprocess.CompletedProcess[str]:
    """``choreo outbox status TARGET ARGS`` with the fixture's store on ``url``."""
    env = {"CHOREO_TEST_STORE_URL": url, "CHOREO_NAMESPACE": ""}
    return choreo_cmd("outbox", "status", target, *args, env=env)


async def status(url: str, *args: str, target: str = STORE) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run, url, *args, target=target)


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[Store]:
    store = Store(create_async_engine(sqlite_url))
    await store.create_tables()
    yield store
    await store.engine.dispose()


async def stage(store: Store, *events: Event) -> None:
    async with store.transaction() as tx:
        for event in events:
            await tx.publish(event)


def test_ages_read_like_a_person() -> None:
    assert age(3.24) == "3.2 s"
    assert age(59.9) == "59.9 s"
    assert age(4 * 60 + 10) == "4 min"
    assert age(2.5 * 3600) == "2.5 h"
    assert age(3 * 86400) == "3.0 d"
    assert age(-1) == "0.0 s"  # a writer's clock ahead of ours


async def test_an_empty_outbox(store: Store, sqlite_url: str) -> None:
    """Exit 0; the namespace is the one given (relays publish there), everything 0."""
    result = await status(sqlite_url, "--broker", "memory://", "--namespace", "shop")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"store:     {sqlite_url}",
        "namespace: shop (relays publish to shop.<event>)",
        "pending:   0",
        "failing:   0",
        "sent:      0 kept",
    ]
    assert result.stderr == ""


async def test_pending_rows_and_the_age_of_the_oldest(store: Store, sqlite_url: str) -> None:
    """Rows committed and not yet relayed (no bus runs): their count and the oldest's age;
    a Service with the store is a target as good as the store."""
    await stage(store, Shipped(order="o-1"), Shipped(order="o-2"))
    await stage(store, Shipped(order="o-3"))
    for target in (STORE, "tests.fixtures.outbox_store:service"):
        result = await status(sqlite_url, target=target)
        assert result.returncode == 0, result.stderr
        assert re.search(r"^pending:   3 \(oldest \d+\.\d s ago\)$", result.stdout, re.M)
        assert "namespace: (none) (relays publish to <event>)" in result.stdout
        assert "failing:   0\n" in result.stdout


async def test_a_failing_row_and_its_last_error(store: Store, sqlite_url: str) -> None:
    """A relay round whose send refuses one row: the rows before it are sent (kept), the
    refused one stays pending with its error."""
    await stage(store, Shipped(order="o-1"), Shipped(order="o-2"), Refused(order="o-3"))

    async def send(messages: list[Message]) -> list[BaseException | None]:
        return [
            ConnectionError("broker said no") if m.type == "refused" else None for m in messages
        ]

    relay = Relay(store, send, Observer())  # its own loop may take the round: either way
    try:
        await relay.round()
    finally:
        await relay.stop()
    found = await store.status()
    assert (found.pending, found.failing, found.sent) == (1, 1, 2)
    result = await status(sqlite_url)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^pending:   1 \(oldest \d+\.\d s ago\)$", result.stdout, re.M)
    assert "failing:   1 (last error: ConnectionError: broker said no)\n" in result.stdout
    assert result.stdout.endswith("sent:      2 kept\n")


@pytest.mark.postgres
async def test_on_postgresql(pg_database: str) -> None:
    """The same on PostgreSQL; the password never shows."""
    store = Store(create_async_engine(pg_database))
    try:
        await store.create_tables()
        await stage(store, Shipped(order="o-1"))
    finally:
        await store.engine.dispose()
    result = await status(pg_database, "--namespace", "shop")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^pending:   1 \(oldest \d+\.\d s ago\)$", result.stdout, re.M)
    assert "sent:      0 kept" in result.stdout


class TestErrors:
    @pytest.mark.parametrize(
        ("target", "message"),
        [
            (
                "tests.fixtures.outbox_store:NOT_A_STORE",
                "is a int, not a choreo.sql.Store (or a Service with one)",
            ),
            ("tests.fixtures.outbox_store:plain", "service 'plain' has no store"),
            ("tests.fixtures.outbox_store:nope", "has no attribute 'nope'"),
            ("tests.fixtures.no_such:store", "no module named 'tests.fixtures.no_such'"),
            ("tests.fixtures.outbox_store", "expected MODULE:ATTRIBUTE"),
        ],
    )
    async def test_a_target_that_is_no_store_exits_2(
        self, store: Store, sqlite_url: str, target: str, message: str
    ) -> None:
        result = await status(sqlite_url, target=target)
        assert result.returncode == 2
        assert result.stderr.startswith("choreo: error: ")
        assert message in result.stderr
        assert result.stderr.count("\n") == 1

    def test_an_unreachable_database_exits_1_without_its_password(self) -> None:
        result = run("postgresql+asyncpg://postgres:hunter2@127.0.0.1:1/shop")
        assert result.returncode == 1
        assert result.stderr.startswith(
            "choreo: error: cannot reach the database at "
            "postgresql+asyncpg://postgres:***@127.0.0.1:1/shop: "
        )
        assert result.stderr.count("\n") == 1
        assert "hunter2" not in result.stderr

    def test_missing_tables_say_to_create_them(self, sqlite_url: str) -> None:
        """An existing database without the tables: exit 1, run store.create_tables()."""
        Path(sqlite_url.removeprefix("sqlite+aiosqlite:///")).touch()  # an empty database
        result = run(sqlite_url)
        assert result.returncode == 1
        assert result.stderr == (
            f"choreo: error: {sqlite_url} has no choreo_outbox table: run store.create_tables()\n"
        )

    def test_a_missing_sqlite_file_is_not_created(self, sqlite_url: str) -> None:
        """Connecting would create an empty file: it is reported missing instead."""
        path = Path(sqlite_url.removeprefix("sqlite+aiosqlite:///"))
        result = run(sqlite_url)
        assert result.returncode == 1
        assert f"cannot open the database at {sqlite_url}: no file {path} " in result.stderr
        assert result.stderr.count("\n") == 1
        assert not path.exists()
