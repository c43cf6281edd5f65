"""The SKU demo: the whole story in-process on memory:// (on SQLite files and on
PostgreSQL), and as separate `choreo run` processes on RabbitMQ, including a kill -9 of
catalog mid-feed; inventory's POST /skus under FastAPI's TestClient. The checkout
(orders, the checkout saga, inventory's reservations, payments) in choreo.testing's
harness, with h.advance for its timeout; orders' POST /orders under the TestClient."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from choreo import Service, topology
from choreo.testing import Harness, harness
from choreo.transports import memory
from services import catalog, checkout, inventory, orders, payments, wishlist
from services.demo import SERVICES as DEMO_SERVICES
from services.events import (
    CheckoutExpired,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    ReleaseStock,
    ReserveStock,
    SkuReceived,
    StockReserved,
    StockUnavailable,
)
from services.inventory.http import create_app
from services.orders.http import create_app as create_orders_app
from services.warehouse import SAMPLE, feed, read_csv

from .conftest import Buses
from .helpers import WAIT, idle
from .support import postgres

with warnings.catch_warnings():
    # starlette >= 1.0 warns when its test client runs on httpx rather than httpx2
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
MODULES = (inventory, catalog, wishlist)
CHECKOUT_MODULES = (orders, checkout, payments)  # the checkout's other stores
NAMES = ("inventory", "catalog", "wishlist")
SERVICES: list[Service] = [inventory.service, catalog.service, wishlist.service]
# subprocesses keep their databases in the test's SQLite files, whatever the shell says
ENV = {name: value for name, value in os.environ.items() if name != "CHOREO_DEMO_DB"}

EXPECTED_AVAILABLE = {"SKU-1": 5, "SKU-2": 4, "SKU-3": 0, "SKU-4": 3, "SKU-5": 3, "SKU-6": 0}
EXPECTED_AVAILABLE["SKU-7"] = 6
EXPECTED_NOTIFIED = {("alice", "SKU-2"), ("bob", "SKU-2"), ("alice", "SKU-4"), ("carol", "SKU-5")}


def query(data: Path, service: str, sql: str) -> list[Any]:
    """Rows of a service's SQLite file in ``data``, read-only; none before the service
    created it."""
    path = data / f"{service}.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        db.close()


Read = Callable[[str, str], Awaitable[list[Any]]]
"""``await read(service, sql)``: rows of that service's database; none before it exists."""


def sqlite_files(data: Path) -> Read:
    async def read(service: str, sql: str) -> list[Any]:
        return query(data, service, sql)

    return read


async def through_the_stores(service: str, sql: str) -> list[Any]:
    """Rows read through the service's own engine (PostgreSQL)."""
    engine = {module.service.name: module for module in MODULES}[service].store.engine
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.exec_driver_sql(sql)]
    except sa.exc.DBAPIError:  # no database or no table yet
        return []


def use_new_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give each service a new store, where CHOREO_DEMO_DB/CHOREO_DEMO_DATA say now (the
    checkout saga: a new saga on it)."""
    for module in (*MODULES, orders, payments):
        store = module.open_store()
        monkeypatch.setattr(module, "store", store)  # the responder's, POST /skus's, ...
        monkeypatch.setattr(module.service, "store", store)  # the handlers'
    monkeypatch.setattr(inventory.reserving, "store", inventory.store)
    monkeypatch.setattr(checkout, "store", checkout.open_store())
    monkeypatch.setattr(checkout, "service", checkout.build(checkout.store))


async def drop_databases() -> None:
    """Drop the databases that new stores of the services would use now."""
    for module in (*MODULES, *CHECKOUT_MODULES):
        await module.open_store().drop()


@pytest.fixture
async def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Path]:
    """A fresh data directory: each service gets a new store on a SQLite file there.
    Request it before ``make_bus``: the stores close after the bus."""
    monkeypatch.setenv("CHOREO_DEMO_DATA", str(tmp_path))
    monkeypatch.delenv("CHOREO_DEMO_DB", raising=False)
    use_new_stores(monkeypatch)
    yield tmp_path
    for module in (*MODULES, *CHECKOUT_MODULES):
        await module.store.engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest) -> str | None:
    """None: SQLite files; else the test PostgreSQL (its admin URL)."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def databases(
    server: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Read]:
    """The services on new stores: SQLite files in a fresh directory, or (CHOREO_DEMO_DB)
    databases ``choreo_t_<hex>_<service>`` on the test PostgreSQL, dropped afterwards.
    Request it before ``make_bus``: the stores close after the bus."""
    monkeypatch.setenv("CHOREO_DEMO_DATA", str(tmp_path))
    if server is None:
        monkeypatch.delenv("CHOREO_DEMO_DB", raising=False)
    else:
        prefix = f"{postgres.PREFIX}{uuid.uuid4().hex[:12]}"
        monkeypatch.setenv("CHOREO_DEMO_DB", postgres.database_url(server, prefix))
    use_new_stores(monkeypatch)
    try:
        yield sqlite_files(tmp_path) if server is None else through_the_stores
    finally:
        for module in (*MODULES, *CHECKOUT_MODULES):
            if module.store.postgres:
                await module.store.drop()
            else:
                await module.store.engine.dispose()


async def available(read: Read) -> dict[str, int]:
    return dict(await read("inventory", "SELECT sku, available FROM availability"))


async def catalog_flags(read: Read) -> dict[str, int]:
    return dict(await read("catalog", "SELECT sku, available FROM products"))


async def notified(read: Read) -> list[Any]:
    return await read("wishlist", 'SELECT "user", sku FROM notifications ORDER BY "user", sku')


async def handled(read: Read) -> int:
    """Messages the three services handled and committed: the rows of their inboxes."""
    counted = [await read(name, "SELECT COUNT(*) FROM choreo_inbox") for name in NAMES]
    return sum(int(rows[0][0]) for rows in counted if rows)


async def settle(expected_handled: int, read: Read) -> None:
    """Wait until the services handled at least ``expected_handled`` messages and
    inventory, catalog and wishlist all saw the last version of every SKU."""
    async with asyncio.timeout(WAIT):
        while True:
            if await handled(read) < expected_handled:
                await asyncio.sleep(0.05)
                continue
            versions = dict(await read("inventory", "SELECT sku, version FROM versions"))
            seen = {
                sku: v
                for sku, v in await read("catalog", "SELECT sku, version FROM products")
                if sku in versions
            }
            state = dict(await read("wishlist", "SELECT sku, version FROM sku_state"))
            recalculated = dict(await read("inventory", "SELECT sku, version FROM availability"))
            if versions and seen == versions == state == recalculated:
                return
            await asyncio.sleep(0.05)


async def applied_everywhere(sku: str, read: Read) -> None:
    """Wait until inventory, catalog and wishlist each handled the ``sku_processed`` of ``sku``."""
    async with asyncio.timeout(WAIT):
        while not (
            sku in await available(read)
            and sku in await catalog_flags(read)
            and sku in dict(await read("wishlist", "SELECT sku, version FROM sku_state"))
        ):
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("transport", ["memory"], indirect=True)
class TestStory:
    """The services in one process on memory://, on SQLite and on PostgreSQL."""

    async def test_sample_feed_reaches_every_database(
        self, databases: Read, make_bus: Buses
    ) -> None:
        """After the sample, each service's own database holds the expected rows."""
        bus = await make_bus()
        await bus.start(*SERVICES)
        await feed(bus, read_csv(SAMPLE))
        await settle(36, databases)
        assert await available(databases) == EXPECTED_AVAILABLE
        flags = await catalog_flags(databases)
        assert flags == {sku: int(n > 0) for sku, n in EXPECTED_AVAILABLE.items()}
        sent = await notified(databases)
        assert set(sent) == EXPECTED_NOTIFIED
        assert len(sent) == len(EXPECTED_NOTIFIED)

    async def test_feeding_the_same_file_twice_notifies_nobody_twice(
        self, databases: Read, make_bus: Buses
    ) -> None:
        """Handlers are idempotent: a repeated feed changes no state and sends nothing."""
        bus = await make_bus()
        await bus.start(*SERVICES)
        await feed(bus, read_csv(SAMPLE))
        await settle(36, databases)
        first = await notified(databases)
        await feed(bus, read_csv(SAMPLE))
        # A SKU nobody wishes for, fed after the repeat: once every service applied it and
        # no handler is left in flight, the repeat was handled everywhere.
        await feed(bus, [SkuReceived(sku="SENTINEL", quantity=1, warehouse="barrier")])
        await applied_everywhere("SENTINEL", databases)
        await idle(bus)
        await settle(72, databases)
        assert await notified(databases) == first

    async def test_going_from_zero_to_some_notifies_each_wisher_once(
        self, databases: Read, make_bus: Buses
    ) -> None:
        """SKU-3 (wished by carol) goes 0 -> 5: exactly one new notification, for carol."""
        bus = await make_bus()
        await bus.start(*SERVICES)
        await feed(bus, read_csv(SAMPLE))
        await settle(36, databases)
        await feed(bus, [SkuReceived(sku="SKU-3", quantity=5, warehouse="south")])
        await feed(bus, [SkuReceived(sku="SKU-3", quantity=6, warehouse="south")])
        await settle(44, databases)
        assert (await available(databases))["SKU-3"] == 6 + 2 - 2
        sent = await notified(databases)
        assert set(sent) - EXPECTED_NOTIFIED == {("carol", "SKU-3")}
        assert len(sent) == len(EXPECTED_NOTIFIED) + 1


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A private in-memory broker, forgotten after the test."""
    name = uuid.uuid4().hex
    yield f"memory://{name}"
    memory.forget(name)


def wait_until(done: Callable[[], bool]) -> None:
    """For tests outside the event loop (the TestClient runs the app in a thread)."""
    deadline = time.monotonic() + WAIT
    while not done():
        assert time.monotonic() < deadline, f"not done within {WAIT}s"
        time.sleep(0.01)


def now(data: Path, what: Callable[[Read], Coroutine[Any, Any, Any]]) -> Any:
    """``what`` of the SQLite files in ``data``, for tests outside the event loop."""
    return asyncio.run(what(sqlite_files(data)))


def outbox(data: Path) -> list[Any]:
    return query(
        data, "inventory", "SELECT event, message_id, sent_at IS NOT NULL FROM choreo_outbox"
    )


class TestPostSkus:
    """inventory's POST /skus (services/inventory/http.py) on a private memory:// broker."""

    def test_a_report_over_http_reaches_every_database(self, data: Path, memory_url: str) -> None:
        """The stock row and sku_processed commit in one transaction; the app's bus relays
        the event, and inventory, catalog and wishlist (in the app's process) handle it."""
        with TestClient(create_app(memory_url, services=SERVICES)) as client:
            report = {"sku": "SKU-3", "warehouse": "south", "quantity": 5}
            response = client.post("/skus", json=report)
            assert response.status_code == 202
            recorded = response.json()
            assert (recorded["sku"], recorded["changed"]) == ("SKU-3", True)
            wait_until(lambda: now(data, catalog_flags).get("SKU-3") == 1)
            wait_until(lambda: now(data, available).get("SKU-3") == 5 - 2)
            wait_until(lambda: bool(now(data, notified)))
        stock = query(data, "inventory", "SELECT sku, warehouse, quantity FROM stock")
        assert stock == [("SKU-3", "south", 5)]
        assert now(data, notified) == [("carol", "SKU-3")]
        assert outbox(data) == [("sku_processed", recorded["message_id"], 1)]  # sent

    def test_the_same_number_again_changes_nothing(self, data: Path, memory_url: str) -> None:
        """A repeated report keeps the version: sku_processed goes out, nobody is notified
        twice."""
        report = {"sku": "SKU-5", "warehouse": "north", "quantity": 3}
        with TestClient(create_app(memory_url, services=SERVICES)) as client:
            assert client.post("/skus", json=report).json()["changed"] is True
            wait_until(lambda: len(outbox(data)) == 1 and bool(now(data, notified)))
            assert client.post("/skus", json=report).json()["changed"] is False
            wait_until(lambda: [sent for *_, sent in outbox(data)] == [1, 1])
            wait_until(lambda: now(data, available).get("SKU-5") == 3 - 1)
        versions = query(data, "inventory", "SELECT sku, version FROM versions")
        assert versions == [("SKU-5", 1)]
        assert now(data, notified) == [("carol", "SKU-5")]

    def test_an_invalid_report_is_a_422_and_writes_nothing(
        self, data: Path, memory_url: str
    ) -> None:
        """The body is validated before the transaction: no stock row, nothing staged."""
        with TestClient(create_app(memory_url)) as client:
            for bad in (
                {"sku": "SKU-1", "warehouse": "north", "quantity": -1},
                {"sku": "", "warehouse": "north", "quantity": 1},
                {"sku": "SKU-1", "quantity": 1},
            ):
                assert client.post("/skus", json=bad).status_code == 422
        assert query(data, "inventory", "SELECT * FROM stock") == []
        assert outbox(data) == []


CHECKOUT_TIMEOUT = timedelta(minutes=15)  # the saga's default: CHOREO_DEMO_CHECKOUT_TIMEOUT unset


def checkout_services() -> list[Service]:
    """Every demo service that handles something, the checkout's included (read now: the
    tests give the checkout a new saga on a new store)."""
    return [
        inventory.service,
        inventory.reserving,
        catalog.service,
        wishlist.service,
        orders.service,
        checkout.service,
        payments.service,
    ]


@pytest.fixture
def checkout_data(data: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``data``, with the checkout's default timeout (15 minutes)."""
    monkeypatch.delenv(checkout.TIMEOUT_VARIABLE, raising=False)
    return data


async def stocked(h: Harness) -> None:
    """The warehouse sample, handled everywhere."""
    for report in read_csv(SAMPLE):
        await h.publish(report)
    await h.settle(timeout=WAIT)


async def place(*placed: OrderPlaced) -> None:
    """What POST /orders does: the order row and order_placed, in one transaction."""
    for order in placed:
        async with orders.store.transaction() as tx:
            assert await orders.place(tx, order) is not None


def order_rows(data: Path) -> dict[str, tuple[str, str | None]]:
    rows = query(data, "orders", "SELECT order_id, status, reason FROM orders")
    return {order_id: (status, reason) for order_id, status, reason in rows}


def holds(data: Path) -> dict[str, tuple[str, int, str]]:
    rows = query(data, "inventory", "SELECT order_id, sku, quantity, status FROM order_holds")
    return {order_id: (sku, quantity, status) for order_id, sku, quantity, status in rows}


def reserved(data: Path) -> dict[str, int]:
    return dict(query(data, "inventory", "SELECT sku, quantity FROM reservations"))


async def status_of(order_id: str) -> str:
    found = await checkout.service.instance(order_id)
    assert found is not None
    return found.state.status


class TestCheckout:
    """The checkout in choreo.testing's harness (memory://, SQLite files): the saga's
    timeout comes with h.advance, without sleeping."""

    async def test_paid_declined_and_expired_orders_end_as_they_should(
        self, checkout_data: Path
    ) -> None:
        """The demo's three orders: o-1 paid and confirmed (its timeout cancelled); o-2
        declined and compensated; o-3 held for review until the timeout, then compensated.
        Each compensation once; the stock of cancelled orders is free again."""
        data = checkout_data
        async with harness(*checkout_services()) as h:
            await stocked(h)
            await place(
                OrderPlaced(order_id="o-1", sku="SKU-1", quantity=2, amount=120),
                OrderPlaced(order_id="o-2", sku="SKU-4", quantity=3, amount=1450),
                OrderPlaced(order_id="o-3", sku="SKU-2", quantity=1, amount=640),
            )
            await h.settle(timeout=WAIT)
            assert order_rows(data) == {
                "o-1": ("confirmed", None),
                "o-2": ("cancelled", "payment declined: over 1000 EUR"),
                "o-3": ("placed", None),  # payments has not answered: no answer comes
            }
            assert [await status_of(o) for o in ("o-1", "o-2", "o-3")] == [
                "confirmed",
                "declined",
                "paying",
            ]
            assert h.events(ReleaseStock) == [ReleaseStock(order_id="o-2", sku="SKU-4")]
            assert (await available(sqlite_files(data)))["SKU-2"] == 4 - 1

            h.advance(CHECKOUT_TIMEOUT)
            await h.settle(timeout=WAIT)
            assert await status_of("o-3") == "expired"
            assert order_rows(data)["o-3"] == ("cancelled", "no payment in time")
            assert h.events(ReleaseStock) == [
                ReleaseStock(order_id="o-2", sku="SKU-4"),
                ReleaseStock(order_id="o-3", sku="SKU-2"),
            ]
            # o-1's timeout was cancelled when it was paid; o-2's too
            assert h.events(CheckoutExpired) == [CheckoutExpired(order_id="o-3")]
            assert h.events(OrderConfirmed) == [OrderConfirmed(order_id="o-1")]
            assert [e.order_id for e in h.events(OrderCancelled)] == ["o-2", "o-3"]
            for service in ("inventory-reserving", "checkout", "orders", "payments"):
                assert await h.dead_letters(service) == []
            history = await checkout.service.instance("o-3")
            assert history is not None
            assert [step.event for step in history.history] == [
                "order_placed",
                "stock_reserved",
                "checkout_expired",
            ]
        assert holds(data) == {
            "o-1": ("SKU-1", 2, "reserved"),
            "o-2": ("SKU-4", 3, "released"),
            "o-3": ("SKU-2", 1, "released"),
        }
        assert reserved(data) == {"SKU-1": 2, "SKU-2": 0, "SKU-3": 2, "SKU-4": 0, "SKU-5": 1}
        read = sqlite_files(data)
        assert await available(read) == {**EXPECTED_AVAILABLE, "SKU-1": 5 - 2}
        flags = await catalog_flags(read)
        assert flags == {sku: int(n > 0) for sku, n in EXPECTED_AVAILABLE.items()}

    async def test_catalog_and_wishlist_follow_the_reservations(self, checkout_data: Path) -> None:
        """An order that holds every unit of SKU-4 makes it unavailable in catalog and
        wishlist; when it expires and the stock is released, SKU-4 is back, and alice,
        who wished for it, is told once more."""
        data = checkout_data
        read = sqlite_files(data)
        async with harness(*checkout_services()) as h:
            await stocked(h)
            assert (await catalog_flags(read))["SKU-4"] == 1
            before = await notified(read)
            await place(OrderPlaced(order_id="o-4", sku="SKU-4", quantity=3, amount=600))
            await h.settle(timeout=WAIT)
            assert (await available(read))["SKU-4"] == 0
            assert (await catalog_flags(read))["SKU-4"] == 0
            wished = dict(query(data, "wishlist", "SELECT sku, available FROM sku_state"))
            assert wished["SKU-4"] == 0
            h.advance(CHECKOUT_TIMEOUT)
            await h.settle(timeout=WAIT)
            assert (await available(read))["SKU-4"] == 3
            assert (await catalog_flags(read))["SKU-4"] == 1
            wished = dict(query(data, "wishlist", "SELECT sku, available FROM sku_state"))
            assert wished["SKU-4"] == 3
            assert await notified(read) == sorted([*before, ("alice", "SKU-4")])
        assert order_rows(data)["o-4"] == ("cancelled", "no payment in time")

    async def test_too_few_units_cancel_the_order_and_reserve_nothing(
        self, checkout_data: Path
    ) -> None:
        """SKU-3 has none for sale: stock_unavailable, the order is cancelled, nothing is
        released, and the timeout is cancelled (advancing the clock changes nothing)."""
        data = checkout_data
        async with harness(*checkout_services()) as h:
            await stocked(h)
            await place(OrderPlaced(order_id="o-5", sku="SKU-3", quantity=1, amount=10))
            await h.settle(timeout=WAIT)
            h.advance(CHECKOUT_TIMEOUT)
            await h.settle(timeout=WAIT)
            assert h.events(StockUnavailable) == [
                StockUnavailable(order_id="o-5", sku="SKU-3", available=0)
            ]
            assert h.events(ReleaseStock) == []
            assert h.events(CheckoutExpired) == []
            assert await status_of("o-5") == "unavailable"
        assert order_rows(data) == {"o-5": ("cancelled", "out of stock")}
        assert holds(data) == {"o-5": ("SKU-3", 0, "refused")}
        assert reserved(data)["SKU-3"] == 2  # the seed's, unchanged

    async def test_a_release_before_its_reservation_refuses_the_reservation(
        self, checkout_data: Path
    ) -> None:
        """Commands arriving out of order (release first): nothing is held, ever."""
        data = checkout_data
        async with harness(inventory.reserving, inventory.service) as h:
            await stocked(h)
            await h.publish(ReleaseStock(order_id="o-6", sku="SKU-1"))
            await h.settle(timeout=WAIT)
            await h.publish(ReserveStock(order_id="o-6", sku="SKU-1", quantity=1))
            await h.settle(timeout=WAIT)
            assert h.events(StockReserved) == []
        assert holds(data) == {"o-6": ("SKU-1", 0, "released")}
        assert "SKU-1" not in reserved(data)


class TestPostOrders:
    """orders' POST /orders (services/orders/http.py) on a private memory:// broker."""

    def test_an_order_over_http_is_taken_and_ends(
        self, checkout_data: Path, memory_url: str
    ) -> None:
        """The order row and order_placed commit in one transaction; the checkout runs in
        the app's process (SKU-9: never stocked, so the order is cancelled)."""
        app = create_orders_app(memory_url, services=checkout_services())
        with TestClient(app) as client:
            order = {"order_id": "o-7", "sku": "SKU-9", "quantity": 1, "amount": 20}
            response = client.post("/orders", json=order)
            assert response.status_code == 202
            taken = response.json()
            assert (taken["order_id"], taken["status"]) == ("o-7", "placed")
            wait_until(lambda: order_rows(checkout_data)["o-7"][0] == "cancelled")
            assert client.post("/orders", json=order).status_code == 409  # the same order
            anonymous = client.post("/orders", json={"sku": "SKU-9", "quantity": 1, "amount": 1})
            assert anonymous.status_code == 202
            assert anonymous.json()["order_id"].startswith("o-")
        assert order_rows(checkout_data)["o-7"] == ("cancelled", "out of stock")
        sent = query(checkout_data, "orders", "SELECT event, message_id FROM choreo_outbox")
        assert ("order_placed", taken["message_id"]) in sent

    def test_an_invalid_order_is_a_422_and_writes_nothing(
        self, checkout_data: Path, memory_url: str
    ) -> None:
        with TestClient(create_orders_app(memory_url)) as client:
            for bad in (
                {"sku": "SKU-1", "quantity": 0, "amount": 10},
                {"sku": "", "quantity": 1, "amount": 10},
                {"sku": "SKU-1", "quantity": 1, "amount": -1},
                {"sku": "SKU-1", "quantity": 1},
            ):
                assert client.post("/orders", json=bad).status_code == 422
        assert query(checkout_data, "orders", "SELECT * FROM orders") == []


def test_demo_command_prints_the_trace_and_the_state(
    server: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m services.demo` (what make demo runs) exits 0 and shows the story, on
    SQLite files and on PostgreSQL (CHOREO_DEMO_DB)."""
    env = {**ENV, "CHOREO_DEMO_DATA": str(tmp_path)}
    if server is not None:
        prefix = f"{postgres.PREFIX}{uuid.uuid4().hex[:12]}"
        env["CHOREO_DEMO_DB"] = postgres.database_url(server, prefix)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "services.demo", "--fresh"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    finally:
        if server is not None:  # the databases the demo created
            monkeypatch.setenv("CHOREO_DEMO_DB", env["CHOREO_DEMO_DB"])
            asyncio.run(drop_databases())
    assert result.returncode == 0, result.stderr
    assert "36 events handled" in result.stdout
    assert "emailed alice@example.com, bob@example.com: back in stock" in result.stdout
    assert "wishlist: notifications sent" in result.stdout
    where = f"(databases {prefix}_*)" if server is not None else f"data in {tmp_path}/"
    assert where in result.stdout
    assert result.stderr == ""
    # the checkout: one paid, one declined and one expired, both compensated
    assert "35 events handled" in result.stdout
    assert "o-2: 3 released" in result.stdout
    assert "o-3: 1 released" in result.stdout
    assert section(result.stdout, "orders") == [
        ["order", "sku", "quantity", "amount", "status", "why"],
        ["o-1", "SKU-1", "2", "120", "confirmed"],
        ["o-2", "SKU-4", "3", "1450", "cancelled", "payment", "declined:", "over", "1000", "EUR"],
        ["o-3", "SKU-2", "1", "640", "cancelled", "no", "payment", "in", "time"],
    ]
    assert section(result.stdout, "inventory: held per order")[1:] == [
        ["o-1", "SKU-1", "2", "reserved"],
        ["o-2", "SKU-4", "3", "released"],
        ["o-3", "SKU-2", "1", "released"],
    ]
    reserved = dict(section(result.stdout, "inventory: reservations")[1:])
    assert reserved == {"SKU-1": "2", "SKU-2": "0", "SKU-3": "2", "SKU-4": "0", "SKU-5": "1"}
    for_sale = {row[0]: int(row[1]) for row in section(result.stdout, "inventory: available")[1:]}
    assert for_sale == {**EXPECTED_AVAILABLE, "SKU-1": 5 - 2}  # o-1's reservation stays


def section(output: str, title: str) -> list[list[str]]:
    """The rows (words) of the table of the demo's output whose title starts with
    ``title``, its header first."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        rows.append(line.split())
    return rows


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_is_valid() -> None:
    """docker-compose parses the stack (no Docker engine needed for `config -q`)."""
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


class Stack:
    """The demo services as separate `choreo run` processes on one RabbitMQ namespace."""

    def __init__(self, url: str, namespace: str, data: Path) -> None:
        self.env = {
            **ENV,
            "CHOREO_BROKER_URL": url,
            "CHOREO_NAMESPACE": namespace,
            "CHOREO_DEMO_DATA": str(data),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = data / "logs"
        self.logs.mkdir()

    def start(self, name: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "choreo", "run", f"services.{name}:service"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=log,
            )

    async def wait_consuming(self, name: str) -> None:
        async with asyncio.timeout(WAIT):
            while b"consuming" not in (self.logs / f"{name}.log").read_bytes():
                assert self.processes[name].poll() is None, self.log(name)
                await asyncio.sleep(0.05)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def feed(self, *args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "services.warehouse", "feed", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "all confirmed" in result.stdout

    def stop(self) -> dict[str, int]:
        """SIGTERM, requesters first: inventory answers until catalog and wishlist are done."""
        codes = {}
        for name in sorted(self.processes, key=lambda name: name == "inventory"):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                codes[name] = process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes


@pytest.mark.broker
@pytest.mark.parametrize("transport", ["rabbitmq"], indirect=True)
async def test_story_on_rabbitmq_with_a_process_per_service_and_a_kill_9(
    make_bus: Buses, namespace: str, tmp_path: Path
) -> None:
    """Separate `choreo run` processes fed by the warehouse command reach the same state;
    catalog killed with SIGKILL mid-feed and restarted ends consistent with inventory."""
    plan = topology.plan(SERVICES, namespace)
    make_bus.extra_queues |= {queue.name for queue in plan.queues}
    make_bus.extra_exchanges |= {name for name, _ in plan.exchanges}
    stack = Stack(make_bus.url, namespace, tmp_path)
    read = sqlite_files(tmp_path)
    try:
        for name in ("inventory", "catalog", "wishlist"):
            stack.start(name)
        for name in ("inventory", "catalog", "wishlist"):
            await stack.wait_consuming(name)
        stack.feed(str(SAMPLE))
        await settle(36, read)
        assert await available(read) == EXPECTED_AVAILABLE
        assert await catalog_flags(read) == {s: int(n > 0) for s, n in EXPECTED_AVAILABLE.items()}
        assert set(await notified(read)) == EXPECTED_NOTIFIED

        # a long feed, and catalog dies in the middle of it
        big = tmp_path / "big.csv"
        lines = ["sku,quantity,warehouse"]
        lines += [f"BULK-{i % 150},{(i * 7) % 5},w{i % 3}" for i in range(600)]
        big.write_text("\n".join(lines) + "\n")
        feeding = asyncio.ensure_future(asyncio.to_thread(stack.feed, str(big)))
        async with asyncio.timeout(WAIT):
            while len(await catalog_flags(read)) < 7 + 20:
                await asyncio.sleep(0.01)
        stack.processes["catalog"].send_signal(signal.SIGKILL)
        stack.processes["catalog"].wait(timeout=30)
        await feeding
        stack.start("catalog")
        await settle(0, read)
        inventory_now = await available(read)
        flags = await catalog_flags(read)
        assert len(inventory_now) == 7 + 150
        assert {sku: flags.get(sku) for sku in inventory_now} == {
            sku: int(n > 0) for sku, n in inventory_now.items()
        }
    finally:
        codes = stack.stop()
    assert codes == {"inventory": 0, "catalog": 0, "wishlist": 0}


@pytest.mark.broker
@pytest.mark.parametrize("transport", ["rabbitmq"], indirect=True)
def test_demo_on_rabbitmq_never_prints_the_password(
    make_bus: Buses, namespace: str, tmp_path: Path
) -> None:
    """`python -m services.demo --broker amqp://user:password@...`: the story runs, and no
    line of its output holds the password (the banner used to print the URL whole)."""
    plan = topology.plan(DEMO_SERVICES, namespace)
    make_bus.extra_queues |= {queue.name for queue in plan.queues}
    make_bus.extra_exchanges |= {name for name, _ in plan.exchanges}
    parts = urlsplit(make_bus.url)
    assert parts.password, "the test broker URL carries a password"
    result = subprocess.run(
        [sys.executable, "-m", "services.demo", "--fresh", "--broker", make_bus.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**ENV, "CHOREO_DEMO_DATA": str(tmp_path), "CHOREO_NAMESPACE": namespace},
    )
    assert result.returncode == 0, result.stderr
    assert "36 events handled" in result.stdout
    assert "35 events handled" in result.stdout  # the checkout
    assert f":{parts.password}@" not in result.stdout + result.stderr
    assert ":***@" in result.stdout


def test_demo_piped_into_head_finishes_and_fails_no_handler(tmp_path: Path) -> None:
    """`make demo | head -5`: the reader goes away after 5 lines; the demo still runs its
    story to the end and exits 0, and no handler fails with BrokenPipeError (printing the
    trace from inside handlers used to dead-letter every event and hang for 60 s)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.demo", "--fresh"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**ENV, "CHOREO_DEMO_DATA": str(tmp_path)},
    )
    assert process.stdout is not None
    for _ in range(5):
        process.stdout.readline()
    process.stdout.close()  # what head does after its 5 lines
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert b"BrokenPipeError" not in stderr
    assert b"dead-lettered" not in stderr
