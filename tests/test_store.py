"""The database store (#13): a transactional outbox and an inbox, proven in process.

Most tests run on both transports (``transport``: memory, RabbitMQ) and both databases
(``db_url``: SQLite, PostgreSQL), four runs each. Every outcome is read where it lands:
rows in the tables, events seen by a plain consumer service, queue and DLQ contents. That
nothing (else) was published is proven with a sentinel barrier behind the events watched
or by the outbox itself, never by a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import sqlalchemy as sa
from pamqp import body as pamqp_body
from pamqp import commands, frame
from pamqp import header as pamqp_header
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import choreo
from choreo import ConfigurationError, Context, Event, Retry, Service, topology, wire
from choreo.observability.observer import Observer, Outcome
from choreo.sql import Store
from choreo.sql.relay import Relay
from choreo.sql.tables import INBOX, OUTBOX, utcnow
from choreo.transports.base import Message

from .conftest import Buses
from .helpers import WAIT, Barrier, Recorder, drain_queue, ready_count
from .support.tcp_proxy import FaultProxy

# -- events and the business table of the services under test -----------------------------


class OrderPlaced(Event, name="store_test.order_placed"):
    order: str


class PaymentCaptured(Event, name="store_test.payment_captured"):
    order: str


BUSINESS = sa.MetaData()
PAYMENTS = sa.Table(  # no unique key: a handler that ran twice leaves two rows
    "payments",
    BUSINESS,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("order_id", sa.String(64), nullable=False),
)


# -- fixtures -------------------------------------------------------------------------------


class Stores:
    """Opens stores (each over its own engine) on the test's database; ``dispose`` closes
    the buses of the test first (their relays use the engines), then the engines."""

    def __init__(self, url: str, buses: Buses | None = None) -> None:
        self.url = url
        self.buses = buses
        self.engines: list[AsyncEngine] = []

    async def __call__(self, **options: Any) -> Store:
        engine = create_async_engine(self.url)
        self.engines.append(engine)
        options.setdefault("poll_interval", 0.2)
        store = Store(engine, **options)
        await store.create_tables()
        async with engine.begin() as connection:
            await connection.run_sync(BUSINESS.create_all)
        return store

    async def dispose(self) -> None:
        if self.buses is not None:
            for bus in self.buses.buses:
                await bus.close()  # stops the relays; make_bus closes them again (idempotent)
        for engine in self.engines:
            await engine.dispose()


@pytest.fixture
async def make_store(make_bus: Buses, db_url: str) -> AsyncIterator[Stores]:
    """Stores on the test's database, for tests that also open buses (``make_bus``)."""
    stores = Stores(db_url, make_bus)
    yield stores
    await stores.dispose()


@pytest.fixture
async def db_stores(db_url: str) -> AsyncIterator[Stores]:
    """Stores on the test's database, for tests without a broker."""
    stores = Stores(db_url)
    yield stores
    await stores.dispose()


class Recording(Observer):
    """Records (service, event, outcome, message id) of each settled delivery."""

    def __init__(self) -> None:
        self.outcomes = Recorder()

    def handled(
        self,
        service: str,
        event: str | None,
        outcome: Outcome,
        duration: float,
        attempt: int,
        message_id: str | None,
        correlation_id: str | None,
    ) -> None:
        self.outcomes.add((service, event, outcome, message_id))


# -- helpers --------------------------------------------------------------------------------


async def rows(store: Store, query: sa.Select[Any]) -> list[Any]:
    async with store.sessions() as session:
        return list((await session.execute(query)).all())


async def payments(store: Store) -> list[str]:
    query = sa.select(PAYMENTS.c.order_id).order_by(PAYMENTS.c.id)
    return [row.order_id for row in await rows(store, query)]


async def outbox(store: Store) -> list[Any]:
    return await rows(store, sa.select(OUTBOX).order_by(OUTBOX.c.id))


async def inbox(store: Store) -> list[tuple[str, str]]:
    query = sa.select(INBOX.c.service, INBOX.c.message_id)
    return [(row.service, row.message_id) for row in await rows(store, query)]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    """Poll ``check`` (a database read) every 20 ms until it holds; bounded."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def all_sent(store: Store, timeout: float = WAIT) -> None:
    """Wait until the relay marked every outbox row sent (confirmed by the broker)."""

    async def done() -> bool:
        return (await store.status()).pending == 0

    await until(done, timeout)


def downstream(seen: Recorder, barrier: Barrier, name: str = "shipping") -> Service:
    """A plain service (no store) that records each PaymentCaptured with its context."""
    service = Service(name)

    @service.on(PaymentCaptured)
    async def record(event: PaymentCaptured, ctx: Context) -> None:
        seen.add((event.order, ctx.message_id, ctx))

    return barrier.join(service)


def billing(store: Store | None, retry: Retry | None = None) -> Service:
    """A stored service: writes a payment row and publishes PaymentCaptured; an order
    named "fail-N" fails its first N attempts after both, "fail" fails every attempt."""
    service = Service("billing", store=store, retry=retry, emits=[PaymentCaptured])

    @service.on(OrderPlaced)
    async def charge(event: OrderPlaced, ctx: Context) -> None:
        await ctx.session.execute(sa.insert(PAYMENTS).values(order_id=event.order))
        await ctx.publish(PaymentCaptured(order=event.order))
        if event.order == "fail" or (
            event.order.startswith("fail-") and ctx.attempt <= int(event.order[5:])
        ):
            raise RuntimeError(f"card declined on attempt {ctx.attempt}")

    return service


# -- 1. a handler's write, its inbox row and its events commit together --------------------


class TestStoredHandler:
    async def test_write_inbox_row_and_published_event_commit_together(
        self, make_store: Stores, make_bus: Buses
    ) -> None:
        store = await make_store()
        seen, barrier = Recorder(), Barrier()
        bus = await make_bus()
        await bus.start(billing(store), downstream(seen, barrier))
        order_id = await bus.publish(OrderPlaced(order="o-1"))
        ((order, message_id, ctx),) = await seen.wait_for(1)
        await all_sent(store)
        await barrier.cross(bus)  # a second copy would have been handled before the sentinel
        assert len(seen.items) == 1
        assert order == "o-1"
        assert ctx.causation_id == order_id  # the staged event continues the conversation
        assert ctx.correlation_id == order_id
        assert await payments(store) == ["o-1"]
        assert await inbox(store) == [("billing", order_id)]
        (row,) = await outbox(store)
        assert row.message_id == message_id
        assert row.event == "store_test.payment_captured"
        assert row.sent_at is not None
        assert row.lease_owner is None
        assert row.last_error is None
        status = await store.status()
        assert (status.pending, status.failing, status.sent) == (0, 0, 1)

    async def test_a_failed_attempt_publishes_nothing_and_writes_nothing(
        self, make_store: Stores, make_bus: Buses
    ) -> None:
        """Each attempt raises after a ctx.session write and a ctx.publish. "fail" fails
        both of its attempts: dead-lettered, and nothing of it is left (no row, no inbox
        row, no event). "fail-1" fails once, then succeeds in a new transaction: one row,
        one event; the inbox row of the failed attempt did not make it a duplicate."""
        store = await make_store()
        seen, barrier = Recorder(), Barrier()
        bus = await make_bus()
        await bus.start(billing(store, Retry(attempts=2, delay=0.01)), downstream(seen, barrier))
        failed = await bus.publish(OrderPlaced(order="fail"))
        recovered = await bus.publish(OrderPlaced(order="fail-1"))
        (dead,) = await drain_queue(bus, f"{bus.namespace}.billing.dlq", 1)
        assert dead.message.message_id == failed
        assert dead.message.headers["x-choreo-attempts"] == 2
        assert dead.message.headers["x-choreo-error-message"] == "card declined on attempt 2"
        await seen.wait_for(1)
        await all_sent(store)
        await barrier.cross(bus)  # an event of "fail" would have been handled before it
        assert [order for order, _, _ in seen.items] == ["fail-1"]
        assert await payments(store) == ["fail-1"]
        assert await inbox(store) == [("billing", recovered)]
        (row,) = await outbox(store)  # what the failed attempts staged was rolled back
        assert row.message_id == seen.items[0][1]
        assert await ready_count(bus, f"{bus.namespace}.billing.dlq") == 0


# -- 3. redeliveries; 7. messages without an id ---------------------------------------------


def billed(outcomes: list[Any]) -> list[tuple[Outcome, str | None]]:
    """(outcome, message id) of billing's deliveries, in the order they were settled."""
    return [
        (outcome, message_id)
        for service, _, outcome, message_id in outcomes
        if service == "billing"
    ]


def raw(namespace: str, order: str, message_id: str | None) -> tuple[Message, str]:
    """An OrderPlaced as a raw message with ``message_id``, and its exchange."""
    message = wire.encode(OrderPlaced(order=order))
    message.message_id = message_id
    return message, topology.exchange_name(namespace, "store_test.order_placed")


class TestInbox:
    async def test_a_redelivery_is_acked_without_running_the_handler(
        self, make_store: Stores, make_bus: Buses
    ) -> None:
        """The same message again, once it was handled: a duplicate. Five copies at once
        (concurrency 8): the first inbox row to commit wins, the others wait for it and
        are duplicates. Either way the handler's row and its event exist once."""
        store = await make_store()
        observer, seen, barrier = Recording(), Recorder(), Barrier()
        bus = await make_bus(observer=observer, concurrency=8)
        await bus.start(billing(store), downstream(seen, barrier))
        message, exchange = raw(bus.namespace, "o-dup", "dup-1")
        await bus.transport.publish(message, exchange)
        handled = ("billing", "store_test.order_placed", Outcome.OK, "dup-1")
        await observer.outcomes.wait_until(lambda items: handled in items)
        await bus.transport.publish(message, exchange)  # the same message again
        await observer.outcomes.wait_until(lambda items: len(billed(items)) == 2)
        assert billed(observer.outcomes.items) == [
            (Outcome.OK, "dup-1"),
            (Outcome.DUPLICATE, "dup-1"),
        ]
        copy, _ = raw(bus.namespace, "o-5", "dup-5")
        await asyncio.gather(*(bus.transport.publish(copy, exchange) for _ in range(5)))
        await observer.outcomes.wait_until(lambda items: len(billed(items)) == 7)
        await seen.wait_for(2)
        await all_sent(store)
        await barrier.cross(bus)
        outcomes = Counter(billed(observer.outcomes.items)[2:])
        assert outcomes == {(Outcome.OK, "dup-5"): 1, (Outcome.DUPLICATE, "dup-5"): 4}
        assert sorted(order for order, _, _ in seen.items) == ["o-5", "o-dup"]
        assert sorted(await payments(store)) == ["o-5", "o-dup"]
        assert sorted(await inbox(store)) == [("billing", "dup-1"), ("billing", "dup-5")]
        assert len(await outbox(store)) == 2
        assert await ready_count(bus, f"{bus.namespace}.billing") == 0
        assert await ready_count(bus, f"{bus.namespace}.billing.dlq") == 0

    async def test_messages_without_an_id_are_handled_every_time(
        self, make_store: Stores, make_bus: Buses, url: str
    ) -> None:
        """A foreign publisher sets no message id: no inbox row, so each copy is handled."""
        store = await make_store()
        observer, seen, barrier = Recording(), Recorder(), Barrier()
        bus = await make_bus(observer=observer)
        await bus.start(billing(store), downstream(seen, barrier))
        message, exchange = raw(bus.namespace, "foreign", None)
        for _ in range(2):
            if url.startswith("amqp"):  # aiormq (so choreo's transport) would add an id
                await publish_without_id(url, exchange, message)
            else:
                await bus.transport.publish(message, exchange)
        await seen.wait_for(2)
        await all_sent(store)
        await barrier.cross(bus)
        assert [order for order, _, _ in seen.items] == ["foreign", "foreign"]
        assert len({message_id for _, message_id, _ in seen.items}) == 2
        assert await payments(store) == ["foreign", "foreign"]
        assert await inbox(store) == []
        assert billed(observer.outcomes.items) == [(Outcome.OK, None), (Outcome.OK, None)]


async def publish_without_id(url: str, exchange: str, message: Message) -> None:
    """Publish as a foreign client that sets no message id would. aiormq (under aio-pika
    and choreo's RabbitMQ transport) gives every message without one a random id, so this
    speaks AMQP 0-9-1 itself, with pamqp: one connection, one confirmed publish."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 5672)

    async def expect(kind: type[Any]) -> Any:
        head = await reader.readexactly(7)
        size = struct.unpack(">BHI", head)[2]
        _, _, value = frame.unmarshal(head + await reader.readexactly(size + 1))
        assert isinstance(value, kind), value
        return value

    def send(value: Any, channel: int = 1) -> None:
        writer.write(frame.marshal(value, channel))

    try:
        async with asyncio.timeout(WAIT):
            writer.write(pamqp_header.ProtocolHeader().marshal())
            await expect(commands.Connection.Start)
            send(commands.Connection.StartOk(response=f"\0{parts.username}\0{parts.password}"), 0)
            tune = await expect(commands.Connection.Tune)
            send(commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0), 0)
            send(commands.Connection.Open(unquote(parts.path[1:]) or "/"), 0)
            await expect(commands.Connection.OpenOk)
            send(commands.Channel.Open())
            await expect(commands.Channel.OpenOk)
            send(commands.Confirm.Select())
            await expect(commands.Confirm.SelectOk)
            properties = commands.Basic.Properties(
                content_type=message.content_type, message_type=message.type, delivery_mode=2
            )
            send(commands.Basic.Publish(exchange=exchange))
            send(pamqp_header.ContentHeader(0, len(message.body), properties))
            send(pamqp_body.ContentBody(message.body))
            await expect(commands.Basic.Ack)
            send(commands.Connection.Close(200, "done", 0, 0), 0)
            await expect(commands.Connection.CloseOk)
    finally:
        writer.close()
        await writer.wait_closed()


# -- 4. ctx.session without a store ---------------------------------------------------------


class TestWithoutStore:
    async def test_ctx_session_dead_letters_with_a_configuration_error(
        self, make_bus: Buses
    ) -> None:
        seen, barrier = Recorder(), Barrier()
        bus = await make_bus()
        await bus.start(billing(None, Retry(attempts=1)), downstream(seen, barrier))
        order_id = await bus.publish(OrderPlaced(order="o-1"))
        (dead,) = await drain_queue(bus, f"{bus.namespace}.billing.dlq", 1)
        await barrier.cross(bus)
        assert dead.message.message_id == order_id
        headers = dead.message.headers
        assert headers["x-choreo-error-type"] == "choreo.errors.ConfigurationError"
        assert "handler of 'billing' runs outside a store" in headers["x-choreo-error-message"]
        assert "Service(..., store=choreo.sql.Store(engine))" in headers["x-choreo-error-message"]
        assert seen.items == []

    def test_ctx_session_says_what_to_do(self) -> None:
        ctx = Context(
            object(),  # type: ignore[arg-type]  # never used: session is not a publish
            service="billing",
            event_name="store_test.order_placed",
            message_id="m-1",
            correlation_id=None,
            headers={},
        )
        with pytest.raises(ConfigurationError, match=r"handler of 'billing' runs outside a store"):
            ctx.session  # noqa: B018


# -- 5. store.transaction(); 6. store.publish(session, event) -------------------------------


class TestOutsideHandlers:
    async def test_transaction_commits_the_write_and_the_event_together(
        self, make_store: Stores, make_bus: Buses
    ) -> None:
        """An exception in the block rolls back the write and the event; a block that
        ends well commits both, and the consumer sees the id tx.publish returned."""
        store = await make_store()
        seen, barrier = Recorder(), Barrier()
        bus = await make_bus(stores=[store])
        await bus.start(downstream(seen, barrier))

        async def out_of_stock() -> None:
            async with store.transaction() as tx:
                await tx.session.execute(sa.insert(PAYMENTS).values(order_id="rolled-back"))
                await tx.publish(PaymentCaptured(order="rolled-back"))
                raise RuntimeError("out of stock")

        with pytest.raises(RuntimeError, match="out of stock"):
            await out_of_stock()
        assert await outbox(store) == []
        async with store.transaction() as tx:
            await tx.session.execute(sa.insert(PAYMENTS).values(order_id="tx-1"))
            message_id = await tx.publish(PaymentCaptured(order="tx-1"), correlation_id="c-1")
            assert (await store.status()).pending == 0  # not committed: no relay sees it
        ((order, seen_id, ctx),) = await seen.wait_for(1)
        await all_sent(store)
        await barrier.cross(bus)  # the rolled-back event would have been handled before it
        assert (order, seen_id, ctx.correlation_id) == ("tx-1", message_id, "c-1")
        assert len(seen.items) == 1
        assert await payments(store) == ["tx-1"]
        assert [row.message_id for row in await outbox(store)] == [message_id]

    async def test_publish_in_the_callers_session_is_sent_only_once_committed(
        self, make_store: Stores, make_bus: Buses
    ) -> None:
        store = await make_store()
        seen, barrier = Recorder(), Barrier()
        bus = await make_bus(stores=[store])
        await bus.start(downstream(seen, barrier))
        async with AsyncSession(store.engine) as session:  # the caller's own session
            await session.begin()
            await session.execute(sa.insert(PAYMENTS).values(order_id="rolled-back"))
            await store.publish(session, PaymentCaptured(order="rolled-back"))
            await session.rollback()
            await session.begin()
            await session.execute(sa.insert(PAYMENTS).values(order_id="own-1"))
            message_id = await store.publish(session, PaymentCaptured(order="own-1"))
            assert (await store.status()).pending == 0  # not committed yet
            await session.commit()
        # no local wake-up: found by the relay's poll (SQLite) or NOTIFY (PostgreSQL)
        await seen.wait_for(1)
        await all_sent(store)
        await barrier.cross(bus)
        assert [(order, seen_id) for order, seen_id, _ in seen.items] == [("own-1", message_id)]
        assert await payments(store) == ["own-1"]
        assert [row.message_id for row in await outbox(store)] == [message_id]


# -- 8. the broker is unreachable -----------------------------------------------------------


class TestBrokerDown:
    async def test_rows_wait_while_the_broker_is_unreachable_then_go_once(
        self, make_store: Stores, make_bus: Buses, transport: str, url: str
    ) -> None:
        """memory: the relaying bus's transport is closed, then connected again. RabbitMQ:
        the relaying bus talks through a proxy that refuses, then accepts again."""
        store = await make_store()
        seen, barrier = Recorder(), Barrier()
        bus = await make_bus()  # consumes, directly
        await bus.start(downstream(seen, barrier))
        async with contextlib.AsyncExitStack() as stack, asyncio.timeout(15):
            if transport == "memory":
                relaying = await make_bus(stores=[store])
                await relaying.transport.close()
                restore: Callable[[], Awaitable[None]] = relaying.transport.connect
            else:
                proxy = await stack.enter_async_context(FaultProxy("127.0.0.1", _port(url)))
                proxied = url.replace(f":{_port(url)}/", f":{proxy.port}/")
                relaying = await choreo.connect(
                    proxied, namespace=bus.namespace, stores=[store], publish_timeout=0.5
                )
                make_bus.buses.append(relaying)  # make_bus deletes what it declared
                stack.push_async_callback(relaying.close)  # before the proxy closes
                proxy.refuse()

                async def heal() -> None:
                    proxy.heal()

                restore = heal
            async with store.transaction() as tx:
                staged = [await tx.publish(PaymentCaptured(order=f"o-{i}")) for i in range(5)]

            async def failing() -> bool:
                status = await store.status()
                return status.failing == 5 and status.last_error is not None

            await until(failing)
            status = await store.status()
            assert (status.pending, status.sent) == (5, 0)
            assert status.last_error is not None
            # the exchange could not be declared, or the publish got no confirm in time
            assert status.last_error.split(":")[0] in ("ConnectionFailed", "PublishError")
            assert all(row.attempts >= 1 and row.sent_at is None for row in await outbox(store))
            assert seen.items == []
            await restore()
            await seen.wait_for(5)
            await all_sent(store)
            await barrier.cross(bus)
        assert Counter(message_id for _, message_id, _ in seen.items) == Counter(staged)
        status = await store.status()
        assert (status.pending, status.failing, status.sent) == (0, 0, 5)


def _port(url: str) -> int:
    return urlsplit(url).port or 5672


# -- 9. retention -----------------------------------------------------------------------------


class TestRetention:
    async def test_sweep_deletes_old_sent_rows_and_inbox_rows_in_batches(
        self, db_stores: Stores
    ) -> None:
        store = await db_stores(retention=timedelta(hours=1))
        now = utcnow()
        old, recent = now - timedelta(hours=2), now - timedelta(minutes=10)

        def row(name: str, created: Any, sent: Any) -> dict[str, Any]:
            return {
                "message_id": name,
                "event": "store_test.payment_captured",
                "body": b"{}",
                "headers": {},
                "created_at": created,
                "due_at": created,
                "sent_at": sent,
                "attempts": 0,
            }

        outbox_rows = [row(f"old-{i}", old, old) for i in range(2000)]  # two full batches
        outbox_rows += [row(f"recent-{i}", old, recent) for i in range(3)]
        outbox_rows += [row(f"pending-{i}", old, None) for i in range(2)]  # old, never sent
        inbox_rows = [
            {"service": "billing", "message_id": f"m-{i}", "handled_at": old} for i in range(1500)
        ]
        inbox_rows += [
            {"service": "billing", "message_id": f"new-{i}", "handled_at": recent} for i in range(4)
        ]
        async with store.sessions() as session, session.begin():
            await session.execute(sa.insert(OUTBOX), outbox_rows)
            await session.execute(sa.insert(INBOX), inbox_rows)
        sent: list[Message] = []

        async def send(messages: list[Message]) -> list[BaseException | None]:
            sent.extend(messages)
            return [None] * len(messages)

        relay = store.relay(send, Observer())
        assert isinstance(relay, Relay)
        await relay.stop()  # only its sweep is under test: no round, no background sweep
        assert await relay.sweep() == 2000 + 1500
        assert sent == []
        left = await outbox(store)
        assert sorted(r.message_id for r in left) == [
            "pending-0", "pending-1", "recent-0", "recent-1", "recent-2"
        ]  # fmt: skip
        assert sorted(message_id for _, message_id in await inbox(store)) == [
            f"new-{i}" for i in range(4)
        ]
        status = await store.status()
        assert (status.pending, status.sent) == (2, 3)
        assert await relay.sweep() == 0


# -- 10. order; 11. relays competing for one outbox (PostgreSQL) ------------------------------


class TestRelaying:
    async def test_one_relay_publishes_in_staging_order(
        self, make_store: Stores, make_bus: Buses
    ) -> None:
        """300 events of two types over five keys, staged in 30 transactions; the relay
        publishes in rounds of 64; one consumer at a time sees them in staging order."""
        store = await make_store(batch_size=64)
        seen, barrier = Recorder(), Barrier()
        ledger = Service("ledger", concurrency=1, prefetch=1)

        @ledger.on(OrderPlaced)
        @ledger.on(PaymentCaptured)
        async def record(event: OrderPlaced | PaymentCaptured, ctx: Context) -> None:
            seen.add((event.order, ctx.message_id))

        bus = await make_bus()
        await bus.start(barrier.join(ledger))
        relaying = await make_bus(stores=[store])
        staged: list[tuple[str, str]] = []
        for batch in range(30):
            async with store.transaction() as tx:
                for i in range(batch * 10, batch * 10 + 10):
                    order = f"k{i % 5}-{i}"
                    event = OrderPlaced(order=order) if i % 2 else PaymentCaptured(order=order)
                    staged.append((order, await tx.publish(event)))
        await seen.wait_for(300)
        await all_sent(store)
        await barrier.cross(bus)
        assert seen.items == staged
        assert relaying.running == ()

    async def test_an_event_nobody_consumes_does_not_hold_back_the_rows_after_it(
        self, make_store: Stores, make_bus: Buses
    ) -> None:
        """on_unroutable="raise": the row of an event no queue is bound to is confirmed and
        dropped, and marked sent; the rows after it go out once, not again every round."""
        store = await make_store()
        seen, barrier = Recorder(), Barrier()
        bus = await make_bus()
        await bus.start(downstream(seen, barrier))
        await make_bus(stores=[store], on_unroutable="raise")
        async with store.transaction() as tx:
            await tx.publish(OrderPlaced(order="nobody-listens"))  # no queue bound
            paid = await tx.publish(PaymentCaptured(order="o-1"))
        await seen.wait_for(1)
        await all_sent(store)
        await barrier.cross(bus)
        assert [(order, message_id) for order, message_id, _ in seen.items] == [("o-1", paid)]
        assert (await store.status()).failing == 0

    @pytest.mark.postgres
    async def test_a_relay_listens_again_after_postgresql_ends_its_listen_connection(
        self, make_bus: Buses, pg_database: str
    ) -> None:
        """The LISTEN connection is terminated by the server: the relay listens again on a
        new one, and a commit in another process (here another engine) still wakes it at
        once, long before its 60 s poll."""
        stores = Stores(pg_database, make_bus)
        try:
            relayed, writer = await stores(poll_interval=60.0), await stores(poll_interval=60.0)
            seen, barrier = Recorder(), Barrier()
            bus = await make_bus()
            await bus.start(downstream(seen, barrier))
            await make_bus(stores=[relayed])

            async def listeners() -> list[int]:
                async with writer.sessions() as session:
                    found = await session.scalars(
                        sa.text(
                            "SELECT pid FROM pg_stat_activity "
                            "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                        )
                    )
                    return list(found)

            async def listening() -> bool:
                return bool(await listeners())

            await until(listening, WAIT)
            (old,) = await listeners()
            async with writer.sessions() as session:
                await session.execute(sa.text(f"SELECT pg_terminate_backend({old})"))

            async def listening_again() -> bool:
                return any(pid != old for pid in await listeners())

            await until(listening_again, WAIT)
            async with writer.transaction() as tx:  # no local wake: another engine's commit
                paid = await tx.publish(PaymentCaptured(order="o-1"))
            async with asyncio.timeout(10):  # the NOTIFY, not the 60 s poll
                await seen.wait_for(1)
            assert seen.items[0][1] == paid
        finally:
            await stores.dispose()

    @pytest.mark.postgres
    async def test_three_relays_on_one_outbox_publish_each_row_once(
        self, make_bus: Buses, pg_database: str
    ) -> None:
        """Three buses relay one PostgreSQL outbox, each through a Store of its own (its
        own engine). 500 rows wait when they start, 500 more are committed while they run
        (ten transactions of 100 at once): each is published once, by one relay."""
        stores = Stores(pg_database, make_bus)
        try:
            await self._three_relays(stores, make_bus)
        finally:
            await stores.dispose()

    async def _three_relays(self, stores: Stores, make_bus: Buses) -> None:
        three = [await stores(batch_size=50) for _ in range(3)]
        seen, barrier = Recorder(), Barrier()
        bus = await make_bus()
        await bus.start(downstream(seen, barrier, "audit"))

        async def stage(batch: int) -> list[str]:
            async with three[batch % 3].transaction() as tx:
                return [
                    await tx.publish(PaymentCaptured(order=f"o-{i}"))
                    for i in range(batch * 100, batch * 100 + 100)
                ]

        staged = [mid for ids in await asyncio.gather(*map(stage, range(5))) for mid in ids]
        observers = [Relayed() for _ in three]
        await asyncio.gather(
            *(make_bus(stores=[s], observer=o) for s, o in zip(three, observers, strict=True))
        )
        staged += [mid for ids in await asyncio.gather(*map(stage, range(5, 10))) for mid in ids]
        await seen.wait_for(1000)
        await all_sent(three[0])
        await barrier.cross(bus)
        counts = Counter(message_id for _, message_id, _ in seen.items)
        assert counts == Counter(staged)  # each message id exactly once
        assert sum(o.count for o in observers) == 1000  # no row was relayed twice
        assert sum(1 for o in observers if o.count) >= 2, [o.count for o in observers]
        status = await three[2].status()
        assert (status.pending, status.failing, status.sent) == (0, 0, 1000)


class Relayed(Observer):
    def __init__(self) -> None:
        self.count = 0

    def relayed(self, store: str, count: int) -> None:
        self.count += count


# -- 12. the store itself -----------------------------------------------------------------------


class TestConfiguration:
    def test_a_sync_engine_is_refused(self) -> None:
        engine = sa.create_engine("sqlite://")
        try:
            with pytest.raises(ConfigurationError, match="an AsyncEngine"):
                Store(engine)  # type: ignore[arg-type]
        finally:
            engine.dispose()

    async def test_an_unsupported_dialect_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        engine = create_async_engine("sqlite+aiosqlite://")
        try:
            monkeypatch.setattr(engine.sync_engine.dialect, "name", "mysql")
            with pytest.raises(ConfigurationError, match="'mysql' is not supported"):
                Store(engine)
        finally:
            await engine.dispose()

    async def test_bad_options_and_stores_are_refused(self) -> None:
        engine = create_async_engine("sqlite+aiosqlite://")
        try:
            bad: list[dict[str, Any]] = [{"batch_size": 0}, {"poll_interval": 0}, {"lease": -1}]
            for options in bad:
                with pytest.raises(ConfigurationError, match="must be > 0"):
                    Store(engine, **options)
        finally:
            await engine.dispose()
        with pytest.raises(ConfigurationError, match=r"store must be a choreo\.sql\.Store"):
            Service("billing", store=object())  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=r"stores must be choreo\.sql\.Store"):
            choreo.connect("memory://", stores=[object()])  # type: ignore[list-item]

    async def test_create_tables_is_idempotent_and_metadata_has_both(
        self, db_stores: Stores
    ) -> None:
        store = await db_stores()  # created once
        assert {"choreo_outbox", "choreo_inbox"} <= set(store.metadata.tables)
        assert store.metadata.tables["choreo_inbox"] is INBOX
        async with store.transaction() as tx:
            message_id = await tx.publish(PaymentCaptured(order="kept"))
        await store.create_tables()
        await store.create_tables()
        assert [row.message_id for row in await outbox(store)] == [message_id]
        async with store.engine.connect() as connection:
            names = await connection.run_sync(lambda c: sa.inspect(c).get_table_names())
        saga_tables = {"choreo_saga", "choreo_saga_history"}  # sagas (#15)
        assert {"choreo_outbox", "choreo_inbox", "payments", *saga_tables} == set(names)
