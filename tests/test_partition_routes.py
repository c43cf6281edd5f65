"""Partitions (#14) reached by every way an event is published: through a store's outbox
(``tx.publish``, a stored handler's ``ctx.publish``), by name (``publish_json``), and
delayed through the broker's delay levels. Each event is looked for where it lands: the
partition queue of its key's bucket, in its key's order. Both transports; the outbox on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from choreo import Bus, ConfigurationError, Context, Event, Service, topology, wire
from choreo._runtime.delays import _bucket
from choreo.delay import LEVELS
from choreo.events import ordering_key_in
from choreo.sql import Store
from choreo.sql.tables import OUTBOX
from choreo.transports.base import Message

from .conftest import Buses
from .helpers import WAIT

PARTITIONS = 4
COUNT = 12  # events per key
KEYS = [f"SKU-{i}" for i in range(6)]


class Step(Event, name="routes_test.step", key="sku"):
    sku: str
    seq: int


class Kick(Event, name="routes_test.kick"):
    skus: list[str]
    seq: int


def catalog() -> Service:
    """The partitioned consumer; tests only declare it, and read its partition queues."""
    service = Service("catalog", partitions=PARTITIONS)

    @service.on(Step)
    async def step(event: Step) -> None: ...

    return service


def partition_of(sku: str) -> int:
    return topology.bucket_of(sku) % PARTITIONS


async def taken(
    bus: Bus, count: int, timeout: float = WAIT
) -> dict[int, list[tuple[dict[str, Any], str]]]:
    """Once ``count`` messages wait in the partition queues: partition -> (body, routing
    key) of each of its messages, in queue order (taken off the queues)."""
    names = [topology.partition_queue_name(bus.namespace, "catalog", i) for i in range(4)]
    async with asyncio.timeout(timeout):
        while sum([await bus.transport.queue_size(name) for name in names]) < count:
            await asyncio.sleep(0.05)
    got: dict[int, list[tuple[dict[str, Any], str]]] = {}
    for i, name in enumerate(names):
        async with bus.transport.fetch(name, count) as deliveries:
            got[i] = [(json.loads(d.message.body), d.routing_key) for d in deliveries]
            for delivery in deliveries:
                await delivery.ack()
    assert sum(map(len, got.values())) == count
    return got


async def partition_contents(bus: Bus, count: int) -> dict[int, list[tuple[str, int]]]:
    """partition -> (sku, seq) of each of its messages, in queue order (see ``taken``)."""
    got = await taken(bus, count)
    return {i: [(body["sku"], body["seq"]) for body, _ in items] for i, items in got.items()}


def assert_in_their_partitions_in_order(
    got: dict[int, list[tuple[str, int]]], keys: list[str], count: int
) -> None:
    for partition, items in got.items():
        assert {partition_of(sku) for sku, _ in items} <= {partition}, partition
    for sku in keys:
        seqs = [seq for s, seq in got[partition_of(sku)] if s == sku]
        assert seqs == list(range(count)), sku


# -- through a store's outbox -----------------------------------------------------------------


@pytest.fixture
async def store(make_bus: Buses, db_url: str) -> AsyncIterator[Store]:
    engine = create_async_engine(db_url)
    store = Store(engine, poll_interval=0.2)
    await store.create_tables()
    yield store
    for bus in make_bus.buses:
        await bus.close()  # the relays use the engine
    await engine.dispose()


async def test_the_outbox_routes_keyed_events_to_their_partition_in_order(
    make_bus: Buses, store: Store
) -> None:
    """Keyed events staged by tx.publish (half the keys) and by a stored handler's
    ctx.publish (the other half, one Kick at a time), relayed by one relay: each lands in
    the partition queue of its key's bucket, each key's events in staging order."""
    consumer = await make_bus()
    await consumer.declare(catalog())
    orders = Service("orders", store=store, emits=[Step], concurrency=1)

    @orders.on(Kick)
    async def kick(event: Kick, ctx: Context) -> None:
        for sku in event.skus:
            await ctx.publish(Step(sku=sku, seq=event.seq))

    relaying = await make_bus()
    await relaying.start(orders)
    by_tx, by_ctx = KEYS[:3], KEYS[3:]
    for seq in range(COUNT):
        async with store.transaction() as tx:
            for sku in by_tx:
                await tx.publish(Step(sku=sku, seq=seq))
        await relaying.publish(Kick(skus=by_ctx, seq=seq))
    got = await partition_contents(consumer, len(KEYS) * COUNT)
    assert_in_their_partitions_in_order(got, KEYS, COUNT)
    async with store.sessions() as session:
        keys = set((await session.scalars(sa.select(OUTBOX.c.routing_key))).all())
    assert keys == {str(topology.bucket_of(sku)) for sku in KEYS}  # stored with each row


async def test_a_delayed_outbox_row_goes_to_its_keys_partition_when_due(
    make_bus: Buses, store: Store
) -> None:
    """tx.publish(delay=1): the relay publishes the row once due, by its key's bucket."""
    consumer = await make_bus()
    await consumer.declare(catalog())
    await (await make_bus(stores=[store])).open()
    async with store.transaction() as tx:
        for sku in KEYS:
            await tx.publish(Step(sku=sku, seq=0), delay=1)
    got = await partition_contents(consumer, len(KEYS))
    assert_in_their_partitions_in_order(got, KEYS, 1)


async def test_an_outbox_created_before_the_routing_key_is_upgraded(
    make_bus: Buses, store: Store
) -> None:
    """An outbox without the routing_key column (an older choreo made it), with a row in
    it: create_tables adds the column; the old row goes out by its message id's bucket, a
    row staged afterwards by its key's."""
    async with store.engine.begin() as connection:
        await connection.execute(sa.text("ALTER TABLE choreo_outbox DROP COLUMN routing_key"))
        message = Step(sku=KEYS[0], seq=0)
        old = {k: v for k, v in store.row(wire.encode(message)).items() if k != "routing_key"}
        table = sa.table("choreo_outbox", *(sa.column(n, OUTBOX.c[n].type) for n in old))
        await connection.execute(sa.insert(table), [old])
    await store.create_tables()
    await store.create_tables()  # idempotent
    async with store.transaction() as tx:
        await tx.publish(Step(sku=KEYS[0], seq=1))
    consumer = await make_bus()
    await consumer.declare(catalog())
    await (await make_bus(stores=[store])).open()
    got = await partition_contents(consumer, 2)
    by_id = topology.bucket_of(old["message_id"]) % PARTITIONS
    assert (KEYS[0], 0) in got[by_id]
    assert (KEYS[0], 1) in got[partition_of(KEYS[0])]


# -- by name: publish_json ----------------------------------------------------------------------


async def test_publish_json_routes_by_the_key_given_or_read_from_the_payload(
    make_bus: Buses,
) -> None:
    """publish_json with key=: by that key, whatever the payload says; without it, by the
    payload's key field, this process having the keyed class of that name (Step)."""
    bus = await make_bus()
    await bus.declare(catalog())
    await bus.publish_json("routes_test.step", {"sku": "SKU-1", "seq": 0})
    await bus.publish_json("routes_test.step", {"sku": "SKU-2", "seq": 0}, key="SKU-5")
    got = await taken(bus, 2)
    routed = {
        body["sku"]: (partition, key) for partition, items in got.items() for body, key in items
    }
    for sku, by in (("SKU-1", "SKU-1"), ("SKU-2", "SKU-5")):
        assert routed[sku] == (partition_of(by), str(topology.bucket_of(by))), sku


# -- delayed through the broker's delay levels ----------------------------------------------


def audit() -> Service:
    """An unpartitioned consumer of Step: its one queue gets every Step."""
    service = Service("audit")

    @service.on(Step)
    async def step(event: Step) -> None: ...

    return service


async def test_a_delayed_keyed_event_reaches_its_keys_partition(make_bus: Buses) -> None:
    """Steps delayed 1 and 2 s reach the partition queue of their key's bucket, carried by a
    BCC routing key through the levels (not delivered: no BCC header arrives), and once the
    unpartitioned queue; a delayed message in the old form (no BCC: in flight from before,
    or a foreign publisher's) still reaches the unpartitioned queue, and no partition."""
    bus = await make_bus()
    await bus.declare(catalog(), audit())
    await bus.publish(Step(sku="SKU-1", seq=0), delay=1)
    await bus.publish(Step(sku="SKU-2", seq=0), delay=2)
    passed_on = {wire.BCC_HEADER: ["5"]}  # a BCC from elsewhere is replaced by the bucket's
    await bus.publish(Step(sku="SKU-3", seq=0), delay=1, headers=passed_on)
    exchange = topology.exchange_name(bus.namespace, "routes_test.step")
    old = wire.encode(Step(sku="SKU-4", seq=0))
    old.headers[wire.EXCHANGE_HEADER] = exchange
    level = topology.delay_level_name(bus.namespace, 0)
    await bus.transport.publish(old, level, topology.delay_routing_key(1, exchange), mandatory=True)
    got = await taken(bus, 3, timeout=10)
    routed = {body["sku"]: partition for partition, items in got.items() for body, _ in items}
    assert routed == {sku: partition_of(sku) for sku in ("SKU-1", "SKU-2", "SKU-3")}
    audit_queue = topology.queue_name(bus.namespace, "audit")
    async with asyncio.timeout(WAIT):
        while await bus.transport.queue_size(audit_queue) < 4:
            await asyncio.sleep(0.05)
    async with bus.transport.fetch(audit_queue, 10) as deliveries:
        skus = sorted(json.loads(d.message.body)["sku"] for d in deliveries)
        assert skus == ["SKU-1", "SKU-2", "SKU-3", "SKU-4"]
        for delivery in deliveries:
            assert wire.BCC_HEADER not in delivery.message.headers
            assert delivery.message.headers[wire.EXCHANGE_HEADER] == exchange
            await delivery.ack()


def bucket_zero(prefix: str) -> str:
    return next(
        f"{prefix}{i}" for i in itertools.count() if topology.bucket_of(f"{prefix}{i}") == 0
    )


async def test_bucket_0_does_not_start_at_level_20(make_bus: Buses) -> None:
    """Why: level 20's "0.#" binding (the skip of a delay under 2**20 s) matches the BCC
    key "0", and RabbitMQ routes every key of a message at every exchange it reaches, so
    a message of bucket 0 published to level 20 also goes down the levels as if its bit
    20 were 0 (2**20 s: delivered at once). So a keyed event of bucket 0 delayed that
    long is refused, before anything is declared, and one without a key takes bucket 1."""
    bus = await make_bus()
    await bus.declare(audit())
    exchange = topology.exchange_name(bus.namespace, "routes_test.step")
    await bus.publish(Step(sku="SKU-1", seq=0), delay=1)  # declares the levels
    async with asyncio.timeout(WAIT):
        while await bus.transport.queue_size(topology.queue_name(bus.namespace, "audit")) < 1:
            await asyncio.sleep(0.05)
    raw = wire.encode(Step(sku="SKU-9", seq=0))
    raw.headers.update({wire.EXCHANGE_HEADER: exchange, wire.BCC_HEADER: ["0"]})
    level = topology.delay_level_name(bus.namespace, LEVELS - 1)
    key = topology.delay_routing_key(1 << (LEVELS - 1), exchange)
    await bus.transport.publish(raw, level, key, mandatory=True)
    async with asyncio.timeout(WAIT):  # delivered now, though it also waits 2**20 s in level 20
        while await bus.transport.queue_size(topology.queue_name(bus.namespace, "audit")) < 2:
            await asyncio.sleep(0.05)
    assert await bus.transport.queue_size(level) == 1

    with pytest.raises(ConfigurationError, match="bucket is 0; publish it through a store"):
        await bus.publish(Step(sku=bucket_zero("SKU-"), seq=0), delay=1 << (LEVELS - 1))
    await bus.publish(Step(sku=bucket_zero("SKU-"), seq=0), delay=(1 << (LEVELS - 1)) - 1)
    unkeyed = Message(b"{}", message_id=bucket_zero("id-"), type="routes_test.kick")
    assert _bucket(unkeyed, 1 << (LEVELS - 1), None) == "1"
    assert _bucket(unkeyed, (1 << (LEVELS - 1)) - 1, None) == "0"


def test_the_key_is_read_back_through_classes_defined_after_the_first_lookup() -> None:
    """ordering_key_in finds a keyed class defined after it last looked, under a base of
    its own (Event's direct subclasses unchanged), and validates the body as it."""

    class Base(Event):
        pass

    def read(message: Message) -> str | None:
        return ordering_key_in(message.type or "", message.body)

    assert read(wire.encode(Base())) is None

    class Late(Base, name="routes_test.late", key="code"):
        code: int

    assert read(wire.encode(Late(code=7))) == "7"
    wrong = Message(b'{"code": "not a number"}', message_id="m1", type="routes_test.late")
    assert read(wrong) is None  # consumers dead-letter it; routed by message id
