"""Sagas (#15): state per key in the store, compensations, timeouts on choreo's clock.

The checkout saga of ``tests/fixtures/saga_app.py`` runs on both transports (memory,
RabbitMQ) and both databases (SQLite, PostgreSQL). What it published is read where it
lands, at a plain ``watcher`` service; that nothing else was published is proven by the
outbox (no row left that could still go out) and a sentinel barrier, never by a sleep.
Timeouts fall due by advancing choreo's clock: the relays poll every 30 s here, so a
timeout handled within the test's bounds was woken by the advance, not found by a poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import create_async_engine

from choreo import Bus, ConfigurationError, Context, Event, Saga, SagaContext, Service
from choreo.clock import CLOCK
from choreo.observability.observer import Outcome
from choreo.sql import Store
from choreo.sql.sagas import SagaConflict, SagaRows
from choreo.testing import harness

from .conftest import Buses
from .fixtures.saga_app import (
    TIMEOUT,
    CheckoutExpired,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    PaymentCaptured,
    PaymentFailed,
    ReleaseStock,
    ReserveStock,
    checkout_saga,
)
from .helpers import WAIT, Barrier, Recorder, drain_queue
from .test_cli import choreo_cmd
from .test_store import Recording, Stores

WATCHED = (ReserveStock, ReleaseStock, CheckoutExpired, OrderConfirmed, OrderCancelled)


@pytest.fixture(autouse=True)
def _real_time() -> Iterator[None]:
    """Every test starts and ends on the system's clock."""
    CLOCK.reset()
    yield
    CLOCK.reset()


@pytest.fixture
async def make_store(make_bus: Buses, db_url: str) -> AsyncIterator[Stores]:
    stores = Stores(db_url, make_bus)
    yield stores
    await stores.dispose()


@pytest.fixture
async def db_store(db_url: str) -> AsyncIterator[Store]:
    """A store on the test's database, for tests without a broker."""
    stores = Stores(db_url)
    yield await stores()
    await stores.dispose()


def watcher(seen: Recorder, barrier: Barrier) -> Service:
    """A plain service that records every event the checkout publishes (event, id)."""
    service = Service("watcher")
    for event_type in WATCHED:

        @service.on(event_type)
        async def record(event: Event, ctx: Context) -> None:
            seen.add((event, ctx.message_id))

    return barrier.join(service)


class Shop:
    """The checkout saga and a watcher on one bus and store."""

    def __init__(self, bus: Bus, store: Store, saga: Saga[Any], observer: Recording) -> None:
        self.bus, self.store, self.saga, self.observer = bus, store, saga, observer
        self.seen, self.barrier = Recorder(), Barrier()

    async def start(self) -> Shop:
        await self.bus.start(self.saga, watcher(self.seen, self.barrier))
        return self

    def outcomes(self) -> list[tuple[str | None, Outcome]]:
        """(event, outcome) of the saga's deliveries, in the order they were settled."""
        return [
            (event, outcome)
            for service, event, outcome, _ in self.observer.outcomes.items
            if service == self.saga.name
        ]

    async def handled(self, count: int) -> None:
        """Wait until the saga settled ``count`` deliveries, then until the outbox sent
        every row that is due."""
        await self.observer.outcomes.wait_until(lambda _: len(self.outcomes()) >= count)
        await sent(self.store)

    async def quiet(self) -> list[Event]:
        """Everything due was sent and reached the watcher: what it saw, in order."""
        await sent(self.store)
        await self.barrier.cross(self.bus)
        return [event for event, _ in self.seen.items]

    async def until_seen(self, event: Event) -> None:
        await self.seen.wait_until(lambda items: any(e == event for e, _ in items))


async def sent(store: Store, timeout: float = WAIT) -> None:
    """Wait until the outbox holds no row that is due and unsent."""
    async with asyncio.timeout(timeout):
        while True:
            status = await store.status()
            if status.pending == status.scheduled:
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def shop(make_store: Stores, make_bus: Buses) -> Shop:
    store = await make_store(poll_interval=30.0)
    observer = Recording()
    bus = await make_bus(observer=observer)
    return await Shop(bus, store, checkout_saga(store), observer).start()


# -- the checkout: paid, declined, timed out ------------------------------------------------


class TestCheckout:
    async def test_a_paid_order_is_confirmed_and_its_timeout_cancelled(self, shop: Shop) -> None:
        """Start, then payment: the order is confirmed, the instance completed, the timeout
        row deleted in the same transaction: advancing past it publishes nothing."""
        placed = await shop.bus.publish(OrderPlaced(order_id="o-1", sku="A1"))
        await shop.handled(1)
        assert (await shop.store.status()).scheduled == 1
        paid = await shop.bus.publish(PaymentCaptured(order_id="o-1"))
        await shop.handled(2)
        CLOCK.advance(TIMEOUT * 2)
        assert await shop.quiet() == [
            ReserveStock(order_id="o-1", sku="A1"),
            OrderConfirmed(order_id="o-1"),
        ]
        status = await shop.store.status()
        assert (status.pending, status.scheduled) == (0, 0)
        instance = await shop.saga.instance("o-1")
        assert instance is not None
        assert (instance.status, instance.version, instance.state.status) == (
            "completed",
            2,
            "confirmed",
        )
        assert [(s.version, s.event, s.message_id, s.status) for s in instance.history] == [
            (1, "saga_test.order_placed", placed, "running"),
            (2, "saga_test.payment_captured", paid, "completed"),
        ]
        assert shop.outcomes() == [
            ("saga_test.order_placed", Outcome.OK),
            ("saga_test.payment_captured", Outcome.OK),
        ]

    async def test_a_declined_payment_is_compensated_once(
        self, shop: Shop, caplog: pytest.LogCaptureFixture
    ) -> None:
        """PaymentFailed releases the stock and completes the instance. A second
        PaymentFailed, and then the timeout (left scheduled on purpose), find it completed
        and are ignored: ReleaseStock went out once (one message id at the watcher)."""
        caplog.set_level(logging.INFO, logger="choreo.saga")
        await shop.bus.publish(OrderPlaced(order_id="o-2", sku="B2"))
        await shop.handled(1)
        await shop.bus.publish(PaymentFailed(order_id="o-2"))
        await shop.handled(2)
        await shop.bus.publish(PaymentFailed(order_id="o-2"))
        await shop.handled(3)
        CLOCK.advance(TIMEOUT)
        await shop.until_seen(CheckoutExpired(order_id="o-2"))
        await shop.handled(4)
        assert await shop.quiet() == [
            ReserveStock(order_id="o-2", sku="B2"),
            ReleaseStock(order_id="o-2", sku="B2"),
            OrderCancelled(order_id="o-2", reason="declined"),
            CheckoutExpired(order_id="o-2"),
        ]
        released = [i for e, i in shop.seen.items if isinstance(e, ReleaseStock)]
        assert len(released) == len(set(released)) == 1
        instance = await shop.saga.instance("o-2")
        assert instance is not None
        assert (instance.status, instance.version, instance.state.status) == (
            "completed",
            2,
            "cancelled",
        )
        assert [s.event for s in instance.history] == [
            "saga_test.order_placed",
            "saga_test.payment_failed",
        ]
        # the second PaymentFailed and the timeout found the instance completed
        assert [o for _, o in shop.outcomes()] == [Outcome.OK] * 2 + [Outcome.SAGA_COMPLETED] * 2
        ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
        assert len(ignored) == 2
        assert all("for instance 'o-2' ignored: it is completed" in line for line in ignored)
        assert "saga_test.checkout_expired" in ignored[1]

    async def test_a_timeout_is_compensated(self, shop: Shop) -> None:
        """No payment: 14 minutes later nothing happened; at 15 the timeout arrives (the
        advance woke the relay), the stock is released and the order cancelled. A payment
        after that is ignored."""
        await shop.bus.publish(OrderPlaced(order_id="o-3", sku="C3"))
        await shop.handled(1)
        CLOCK.advance(TIMEOUT - timedelta(minutes=1))
        await sent(shop.store)
        assert (await shop.store.status()).scheduled == 1
        assert await shop.quiet() == [ReserveStock(order_id="o-3", sku="C3")]
        CLOCK.advance(timedelta(minutes=1))
        async with asyncio.timeout(5.0):  # well under the relay's 30 s poll
            await shop.until_seen(OrderCancelled(order_id="o-3", reason="timeout"))
        await shop.bus.publish(PaymentCaptured(order_id="o-3"))
        await shop.handled(3)
        assert await shop.quiet() == [
            ReserveStock(order_id="o-3", sku="C3"),
            CheckoutExpired(order_id="o-3"),
            ReleaseStock(order_id="o-3", sku="C3"),
            OrderCancelled(order_id="o-3", reason="timeout"),
        ]
        instance = await shop.saga.instance("o-3")
        assert instance is not None
        assert (instance.status, instance.version, instance.state.status) == (
            "completed",
            2,
            "expired",
        )
        assert (await shop.store.status()).pending == 0


# -- starts, missing and completed instances -------------------------------------------------


class TestInstances:
    async def test_a_second_start_of_a_key_is_ignored(self, shop: Shop) -> None:
        """Two OrderPlaced for one order (two message ids): the first creates the
        instance, the second finds it and changes nothing: one ReserveStock, one timeout."""
        await shop.bus.publish(OrderPlaced(order_id="o-4", sku="D4"))
        await shop.handled(1)
        await shop.bus.publish(OrderPlaced(order_id="o-4", sku="other"))
        await shop.handled(2)
        assert await shop.quiet() == [ReserveStock(order_id="o-4", sku="D4")]
        instance = await shop.saga.instance("o-4")
        assert instance is not None
        assert (instance.version, instance.state.sku, len(instance.history)) == (1, "D4", 1)
        assert (await shop.store.status()).scheduled == 1

    async def test_an_event_for_no_instance_is_ignored(
        self, shop: Shop, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="choreo.saga")
        message_id = await shop.bus.publish(PaymentCaptured(order_id="nobody"))
        await shop.handled(1)
        assert await shop.quiet() == []
        assert await shop.saga.instance("nobody") is None
        assert shop.outcomes() == [("saga_test.payment_captured", Outcome.OK)]
        (line,) = [r.getMessage() for r in caplog.records if r.name == "choreo.saga"]
        assert line == (
            f"saga 'checkout': saga_test.payment_captured {message_id} for instance 'nobody' "
            "ignored: there is no such instance"
        )

    async def test_an_event_for_no_instance_is_dead_lettered_if_asked(
        self, make_store: Stores, make_bus: Buses
    ) -> None:
        store = await make_store()
        bus = await make_bus()
        await bus.start(checkout_saga(store, on_missing="dead-letter"))
        message_id = await bus.publish(PaymentFailed(order_id="nobody"))
        (dead,) = await drain_queue(bus, f"{bus.namespace}.checkout.dlq", 1)
        assert dead.message.message_id == message_id
        headers = dead.message.headers
        assert headers["x-choreo-error-type"] == "Reject"
        assert headers["x-choreo-error-message"] == "saga 'checkout' has no instance 'nobody'"
        assert headers["x-choreo-attempts"] == 1
        assert (await store.status()).pending == 0


# -- schedule and cancel ---------------------------------------------------------------------


class Reminders(BaseModel):
    order_id: str
    first: str | None = None
    cancelled: list[bool] = Field(default_factory=list)
    reminded: list[str] = Field(default_factory=list)


class RemindersOpened(Event, name="saga_test.reminders_opened"):
    order_id: str


class Remind(Event, name="saga_test.remind"):
    order_id: str
    which: str


def reminders(store: Store) -> Saga[Reminders]:
    saga = Saga("reminders", state=Reminders, key="order_id", store=store, emits=[Remind])

    @saga.starts(RemindersOpened)
    async def opened(event: RemindersOpened, s: SagaContext[Reminders]) -> None:
        """Two reminders; the first is cancelled at once, in the same transaction."""
        s.state.first = await s.schedule(Remind(order_id=s.key, which="first"), 60)
        await s.schedule(Remind(order_id=s.key, which="second"), timedelta(minutes=2))
        s.state.cancelled.append(await s.cancel(s.state.first))

    @saga.on(Remind)
    async def remind(event: Remind, s: SagaContext[Reminders]) -> None:
        """Cancelling what is gone, or what is being handled (sent), is refused."""
        assert s.state.first is not None
        assert s.ctx.message_id is not None
        s.state.cancelled.append(await s.cancel(s.state.first))
        s.state.cancelled.append(await s.cancel(s.ctx.message_id))
        s.state.reminded.append(event.which)

    return saga


class TestSchedule:
    async def test_a_cancelled_schedule_is_never_published(
        self, make_store: Stores, make_bus: Buses
    ) -> None:
        store = await make_store(poll_interval=30.0)
        observer = Recording()
        bus = await make_bus(observer=observer)
        saga = reminders(store)
        await bus.start(saga)
        await bus.publish(RemindersOpened(order_id="r-1"))
        await observer.outcomes.wait_for(1)
        status = await store.status()
        assert (status.pending, status.scheduled) == (1, 1)
        CLOCK.advance(timedelta(minutes=5))
        await observer.outcomes.wait_for(2)
        await sent(store)
        instance = await saga.instance("r-1")
        assert instance is not None
        assert instance.state.reminded == ["second"]
        assert instance.state.cancelled == [True, False, False]
        assert (await store.status()).pending == 0
        assert [o for _, _, o, _ in observer.outcomes.items] == [Outcome.OK, Outcome.OK]

    async def test_a_negative_delay_is_refused(self, db_store: Store) -> None:
        store = db_store
        rows = SagaRows(store, "test")
        async with store.transaction() as tx:
            ctx = Context(
                object(),  # type: ignore[arg-type]  # never used to publish here
                service="s",
                event_name="e",
                message_id="m",
                correlation_id=None,
                headers={},
            )
            ctx._staging = tx
            s = SagaContext("s", "k", Reminders(order_id="k"), 0, ctx, rows)
            with pytest.raises(ConfigurationError, match="cannot be negative"):
                await s.schedule(Remind(order_id="k", which="x"), -1)


# -- concurrent events of one instance ---------------------------------------------------------


class Tally(BaseModel):
    order_id: str
    count: int = 0
    seen: list[int] = Field(default_factory=list)


class TallyOpened(Event, name="saga_test.tally_opened"):
    order_id: str


class Tick(Event, name="saga_test.tick"):
    order_id: str
    n: int


class TestConcurrency:
    async def test_concurrent_events_of_one_instance_all_apply(
        self, make_store: Stores, make_bus: Buses
    ) -> None:
        """20 events of one instance, handled 8 at a time: each reads the state, waits,
        and writes it back (lost updates if two ever applied at once). All 20 apply, one
        version each, in some order; none was retried or dead-lettered. PostgreSQL locks
        the instance's row; SQLite's inbox write lock serialises the transactions."""
        store = await make_store()
        observer = Recording()
        bus = await make_bus(observer=observer, concurrency=8, prefetch=20)
        saga = Saga("tally", state=Tally, key="order_id", store=store)
        in_flight: list[int] = []

        @saga.starts(TallyOpened)
        async def opened(event: TallyOpened, s: SagaContext[Tally]) -> None:
            pass

        @saga.on(Tick)
        async def tick(event: Tick, s: SagaContext[Tally]) -> None:
            in_flight.append(bus.in_flight)
            count = s.state.count
            await asyncio.sleep(0.005)
            s.state.count = count + 1
            s.state.seen.append(event.n)

        await bus.start(saga)
        await bus.publish(TallyOpened(order_id="t-1"))
        await observer.outcomes.wait_for(1)
        await asyncio.gather(*(bus.publish(Tick(order_id="t-1", n=n)) for n in range(20)))
        await observer.outcomes.wait_for(21)
        instance = await saga.instance("t-1")
        assert instance is not None
        assert instance.state.count == 20
        assert sorted(instance.state.seen) == list(range(20))
        assert instance.version == 21
        assert [s.version for s in instance.history] == list(range(1, 22))
        assert Counter(o for _, _, o, _ in observer.outcomes.items) == {Outcome.OK: 21}
        assert max(in_flight) > 1  # the deliveries were handled concurrently

    async def test_a_stale_version_is_a_conflict(self, db_store: Store) -> None:
        """The optimistic check under the lock: a write at a version that is no longer
        the instance's raises SagaConflict (retried by the handler's Retry)."""
        store = db_store
        rows = SagaRows(store, "test")
        async with store.transaction() as tx:
            assert await rows.create(tx.session, "s", "k", {"n": 0}, "running")
            assert not await rows.create(tx.session, "s", "k", {"n": 9}, "running")
            save = {"status": "running", "event": "e", "message_id": None}
            assert await rows.save(tx.session, "s", "k", state={"n": 1}, version=0, **save) == 1
            with pytest.raises(SagaConflict, match="since it was read at version 0"):
                await rows.save(tx.session, "s", "k", state={"n": 2}, version=0, **save)
        found = await rows.get("s", "k")
        assert found is not None
        assert (found[0].state, found[0].version, len(found[1])) == ({"n": 1}, 1, 1)


# -- declaring a saga --------------------------------------------------------------------------


class NoKey(Event, name="saga_test.no_key"):
    sku: str


class TestDeclaring:
    @pytest.fixture
    def store(self) -> Store:
        return Store(create_async_engine("sqlite+aiosqlite://"))  # never connected

    def test_a_saga_is_a_service_with_its_handlers(self, store: Store) -> None:
        saga = checkout_saga(store)
        assert isinstance(saga, Service)
        assert saga.store is store
        assert list(saga.handlers) == [
            "saga_test.order_placed",
            "saga_test.payment_captured",
            "saga_test.payment_failed",
            "saga_test.checkout_expired",
        ]
        assert saga.starting == {"saga_test.order_placed"}
        handler = saga.handlers["saga_test.order_placed"]
        assert handler.qualname == "tests.fixtures.saga_app.checkout_saga.<locals>.placed"
        assert handler.takes_context
        assert saga.may_emit("saga_test.release_stock")

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"store": None}, "a saga needs a store"),
            ({"store": object()}, "store must be a choreo.sql.Store"),
            ({"state": dict}, "state must be a pydantic model"),
            ({"key": ""}, "key must name a field"),
            ({"on_missing": "drop"}, "on_missing must be 'ignore' or 'dead-letter'"),
        ],
    )
    def test_wrong_options_are_configuration_errors(
        self, store: Store, options: dict[str, Any], message: str
    ) -> None:
        arguments: dict[str, Any] = {"state": Tally, "key": "order_id", "store": store}
        with pytest.raises(ConfigurationError, match=message):
            Saga("tally", **{**arguments, **options})

    def test_every_event_carries_the_key(self, store: Store) -> None:
        saga = Saga("tally", state=Tally, key="order_id", store=store)
        with pytest.raises(ConfigurationError, match="NoKey has no field 'order_id', the key"):

            @saga.on(NoKey)
            async def handle(event: NoKey, s: SagaContext[Tally]) -> None:
                pass

        assert saga.handlers == {}

    def test_a_start_event_gives_what_the_state_requires(self, store: Store) -> None:
        class Needy(BaseModel):
            order_id: str
            customer: str

        saga = Saga("needy", state=Needy, key="order_id", store=store)
        with pytest.raises(ConfigurationError, match="none named customer: give them defaults"):

            @saga.starts(TallyOpened)
            async def opened(event: TallyOpened, s: SagaContext[Needy]) -> None:
                pass

        @saga.on(TallyOpened)  # not a start: the state is read, never made from it
        async def other(event: TallyOpened, s: SagaContext[Needy]) -> None:
            pass

    def test_handlers_are_async_and_take_event_and_saga(self, store: Store) -> None:
        saga = Saga("tally", state=Tally, key="order_id", store=store)
        with pytest.raises(ConfigurationError, match="must be an async function"):
            saga.add_handler(Tick, lambda event, s: None)

        async def three(event: Tick, s: SagaContext[Tally], extra: int) -> None:
            pass

        with pytest.raises(ConfigurationError, match=r"must take \(event, saga\) or \(event\)"):
            saga.add_handler(Tick, three)

        async def alone(event: Tick) -> None:
            pass

        saga.add_handler(Tick, alone)
        assert not saga.starting

    def test_a_saga_answers_no_requests(self, store: Store) -> None:
        saga = Saga("tally", state=Tally, key="order_id", store=store)
        with pytest.raises(ConfigurationError, match="handles events only"):

            @saga.responds(Tick)
            async def answer(event: Tick) -> Tick:
                return event


# -- choreo.testing: drive a saga, advance the clock -----------------------------------------


async def test_the_harness_drives_a_saga_and_advances_time(sqlite_url: str) -> None:
    """What a user's test of a saga looks like: memory broker, SQLite store, no sleeping
    for the 15-minute timeout (the relay polls every 30 s: the advance woke it)."""
    store = Store(create_async_engine(sqlite_url), poll_interval=30.0)
    await store.create_tables()
    saga = checkout_saga(store)
    try:
        async with harness(saga) as h:
            await h.publish(OrderPlaced(order_id="o-7", sku="G7"))
            await h.settle()  # the timeout, not due yet, does not hold it up
            assert h.published_by("checkout") == [ReserveStock(order_id="o-7", sku="G7")]
            h.advance(TIMEOUT)
            await h.settle()
            assert h.published_by("checkout") == [
                ReserveStock(order_id="o-7", sku="G7"),
                CheckoutExpired(order_id="o-7"),
                ReleaseStock(order_id="o-7", sku="G7"),
                OrderCancelled(order_id="o-7", reason="timeout"),
            ]
            instance = await saga.instance("o-7")
            assert instance is not None
            assert (instance.status, instance.state.status) == ("completed", "expired")
            assert CLOCK.offset == TIMEOUT.total_seconds()
        assert CLOCK.offset == 0  # set back when the harness ends
    finally:
        await store.engine.dispose()


# -- choreo saga list|show ---------------------------------------------------------------------

SAGA = "tests.fixtures.saga_app:checkout"


def saga_cmd(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``choreo saga ARGS`` with the fixture's store on ``url``."""
    return choreo_cmd("saga", *args, env={"CHOREO_TEST_STORE_URL": url})


class TestCli:
    @pytest.fixture
    async def orders(self, sqlite_url: str) -> dict[str, str]:
        """o-1 running; o-2 paid (completed). Returns their message ids by name."""
        store = Store(create_async_engine(sqlite_url))
        await store.create_tables()
        try:
            async with harness(checkout_saga(store)) as h:
                ids = {"placed-1": await h.publish(OrderPlaced(order_id="o-1", sku="A"))}
                ids["placed-2"] = await h.publish(OrderPlaced(order_id="o-2", sku="B"))
                await h.settle()
                ids["paid-2"] = await h.publish(PaymentCaptured(order_id="o-2"))
                await h.settle()
        finally:
            await store.engine.dispose()
        return ids

    async def test_list_and_show(self, orders: dict[str, str], sqlite_url: str) -> None:
        listed = await asyncio.to_thread(saga_cmd, sqlite_url, "list", SAGA)
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()
        assert header.split() == ["KEY", "STATUS", "VERSION", "UPDATED"]
        assert sorted(row.split()[:3] for row in rows) == [
            ["o-1", "running", "1"],
            ["o-2", "completed", "2"],
        ]
        assert all(row.endswith(" UTC") for row in rows)
        running = await asyncio.to_thread(saga_cmd, sqlite_url, "list", SAGA, "--status", "running")
        assert [row.split()[0] for row in running.stdout.splitlines()[1:]] == ["o-1"]
        shown = await asyncio.to_thread(saga_cmd, sqlite_url, "show", SAGA, "o-2")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[:4] == [
            "saga:     checkout",
            "key:      o-2",
            "status:   completed",
            "version:  2",
        ]
        assert lines[4].startswith("created:  ")
        assert lines[5].startswith("updated:  ")
        state = lines[lines.index("state:") + 1 : lines.index("history:")]
        parsed = json.loads("\n".join(state))
        assert parsed == {**parsed, "order_id": "o-2", "sku": "B", "status": "confirmed"}
        assert isinstance(parsed["timeout"], str)  # the id schedule returned
        history = lines[lines.index("history:") + 1 :]
        assert history[0].split() == ["VERSION", "HANDLED", "EVENT", "MESSAGE", "ID", "STATUS"]
        first, second = (line.split() for line in history[1:])
        assert [first[0], first[4], first[5], first[6]] == [
            "1", "saga_test.order_placed", orders["placed-2"], "running"
        ]  # fmt: skip
        assert [second[0], second[4], second[5], second[6]] == [
            "2", "saga_test.payment_captured", orders["paid-2"], "completed"
        ]  # fmt: skip

    async def test_no_instances_and_no_such_instance(self, sqlite_url: str) -> None:
        store = Store(create_async_engine(sqlite_url))
        await store.create_tables()
        await store.engine.dispose()
        empty = await asyncio.to_thread(saga_cmd, sqlite_url, "list", SAGA, "--status", "completed")
        assert (empty.returncode, empty.stdout) == (0, "saga 'checkout': no completed instances\n")
        missing = await asyncio.to_thread(saga_cmd, sqlite_url, "show", SAGA, "o-9")
        assert (missing.returncode, missing.stdout) == (1, "")
        assert missing.stderr == "choreo: error: saga 'checkout' has no instance 'o-9'\n"

    @pytest.mark.parametrize(
        ("args", "code", "message"),
        [
            (("list", "tests.fixtures.saga_app:NOT_A_SAGA"), 2, "is a int, not a choreo.Saga"),
            (("list", "tests.fixtures.saga_app:plain"), 2, "is a Service, not a choreo.Saga"),
            (("list", SAGA, "--status", "done"), 2, "--status must be running or completed"),
            (("show", SAGA, "o-1"), 1, "no file"),
        ],
    )
    async def test_errors_are_one_line(
        self, sqlite_url: str, args: tuple[str, ...], code: int, message: str
    ) -> None:
        result = await asyncio.to_thread(saga_cmd, sqlite_url, *args)
        assert result.returncode == code
        assert result.stderr.startswith("choreo: error: ")
        assert message in result.stderr
        assert len(result.stderr.splitlines()) == 1

    async def test_a_database_without_saga_tables(self, sqlite_url: str) -> None:
        engine = create_async_engine(sqlite_url)
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE other (id INTEGER)")
        await engine.dispose()
        result = await asyncio.to_thread(saga_cmd, sqlite_url, "list", SAGA)
        assert result.returncode == 1
        assert result.stderr == (
            f"choreo: error: {sqlite_url} has no choreo_saga table: run store.create_tables()\n"
        )
