"""Delayed publishing (#15): ``publish(event, delay=...)`` through the broker's delay levels
(no plugin) on both transports, and through a store's outbox on SQLite and PostgreSQL.

Each delayed message is watched where it lands: the time and order it reached its
consumers, the delay queue it waited in, what the bus declared. The long case (70 s) runs
on RabbitMQ only (``slow``); the in-memory broker keeps RabbitMQ's real-time TTLs, so it
runs the same test with 7 s instead (levels 2, 1 and 0 rather than 6, 2 and 1).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from choreo import (
    Bus,
    ConfigurationError,
    Context,
    Event,
    Service,
    Unroutable,
    delay,
    topology,
    wire,
)
from choreo.sql import Store
from choreo.transports.base import DIRECT, FANOUT, TOPIC, Delivery, Message, QueueSpec
from choreo.transports.memory import broker as memory_broker

from .conftest import Buses
from .helpers import WAIT, Recorder

EARLY = 0.005  # seconds of clock granularity allowed before a due time: never more
LATE = 1.5  # "exact to about a second": how late a delayed message may arrive


class Ping(Event, name="delay_test.ping"):
    label: str


class Kick(Event, name="delay_test.kick"):
    label: str


def receivers(seen: Recorder) -> tuple[Service, Service]:
    """Two services that handle Ping (a fanout: each gets every one) and record
    (service, label, arrival, message id, context)."""
    return receiver("rx", seen), receiver("audit", seen)


def receiver(name: str, seen: Recorder) -> Service:
    service = Service(name)

    @service.on(Ping)
    async def record(event: Ping, ctx: Context) -> None:
        seen.add((name, event.label, time.monotonic(), ctx.message_id, ctx))

    return service


def kicker(sent: dict[str, float], later: float, store: Store | None = None) -> Service:
    """Publishes a Ping ``later`` seconds after each Kick it handles, from its handler,
    passing the Kick's headers on (``x-death`` of a delayed Kick included)."""
    service = Service("kicker", emits=[Ping], store=store)

    @service.on(Kick)
    async def kick(event: Kick, ctx: Context) -> None:
        sent[event.label] = time.monotonic()
        delayed = timedelta(seconds=later)
        await ctx.publish(Ping(label=event.label), headers=ctx.headers, delay=delayed)

    return service


async def delay_queue_sizes(bus: Bus) -> dict[int, int]:
    """level -> messages waiting in that level's queue (the levels that hold some)."""
    sizes = {}
    for level in range(delay.LEVELS):
        size = await bus.transport.queue_size(topology.delay_level_name(bus.namespace, level))
        if size:
            sizes[level] = size
    return sizes


def delay_names(names: frozenset[str], namespace: str) -> set[str]:
    return {name for name in names if name.startswith(f"{namespace}.choreo.delay.")}


# -- in order of due time, never early, nothing lost across a worker restart ---------------


@pytest.mark.parametrize(
    "transport",
    ["memory", pytest.param("rabbitmq", marks=[pytest.mark.broker, pytest.mark.slow])],
    indirect=True,
)
async def test_delays_arrive_in_due_order_never_early_and_survive_a_worker_restart(
    transport: str, make_bus: Buses
) -> None:
    """bus.publish with 0.5 s, 3 s and 70 s (7 s in memory), a foreign publisher's 2 s,
    and a handler's ctx.publish with 5 s from a Kick delayed 1 s, all at once: each
    reaches both consumers, in order of due time, never before it (0.5 s is rounded up to
    1 s), within about a second. The handler passes the Kick's x-death on: the levels
    drop it, else RabbitMQ would drop the Ping as a dead-letter cycle at level 0. The
    consuming worker stops once the 3 s one arrived, while two still wait in the delay
    queues; another starts, and they arrive."""
    long = 70 if transport == "rabbitmq" else 7
    seen, kicked = Recorder(), dict[str, float]()
    first = await make_bus()
    await first.start(*receivers(seen), kicker(kicked, later=5))
    ns, sent, ids = first.namespace, dict[str, float](), dict[str, str]()
    exchange = topology.exchange_name(ns, "delay_test.ping")

    for label, wait in (("long", long), ("3s", 3.0), ("0.5s", 0.5), ("now", None)):
        sent[label] = time.monotonic()
        ids[label] = await first.publish(Ping(label=label), delay=wait)
    kick = await first.publish(Kick(label="ctx 5s"), delay=1)
    # a publisher without choreo, following the README: no type, the destination in
    # x-choreo-exchange, the delay's bits and the exchange in the routing key
    foreign = Message(b'{"label": "foreign"}', message_id="foreign-1")
    foreign.content_type, foreign.headers = "application/json", {"x-choreo-exchange": exchange}
    level = f"{ns}.choreo.delay.01"  # 2 s = 2**1: the level of its highest bit
    sent["foreign"] = time.monotonic()
    await first.transport.publish(
        foreign, level, ".".join(f"{2:021b}") + f".{exchange}", mandatory=True
    )
    early = {"now", "0.5s", "foreign", "3s"}
    await seen.wait_until(lambda items: len([i for i in items if i[1] in early]) == 8)
    await first.close()  # the worker stops; "ctx 5s" and "long" wait in the delay levels
    second = await make_bus()
    assert sum((await delay_queue_sizes(second)).values()) == 2
    await second.start(*receivers(seen))
    await seen.wait_for(12, timeout=long + 10)

    due = {"now": 0.0, "0.5s": 1.0, "foreign": 2.0, "3s": 3.0, "ctx 5s": 5.0, "long": long}
    sent["ctx 5s"] = kicked["ctx 5s"]  # 1 s after the Kick was published
    order = list(due)
    for service in ("rx", "audit"):
        arrived = [(label, at) for name, label, at, _, _ in seen.items if name == service]
        assert [label for label, _ in arrived] == order, service
        for label, at in arrived:
            waited = at - sent[label]
            assert due[label] - EARLY <= waited <= due[label] + LATE, (service, label, waited)
    by_label = {label: (message_id, ctx) for _, label, _, message_id, ctx in seen.items}
    for label in ("now", "0.5s", "3s", "long"):  # the id publish returned: the same message
        assert by_label[label][0] == ids[label]
    for label in ("0.5s", "3s", "long", "ctx 5s", "foreign"):
        assert by_label[label][1].headers[wire.EXCHANGE_HEADER] == exchange
    assert wire.EXCHANGE_HEADER not in by_label["now"][1].headers  # unchanged when not delayed
    follow_up = by_label["ctx 5s"][1]  # a handler's delayed publish continues its chain
    assert follow_up.headers[wire.SOURCE_HEADER] == "kicker"
    assert follow_up.causation_id == follow_up.correlation_id == kick


# -- a bounded number of queues, whatever the delays ------------------------------------------


async def test_the_delay_levels_are_a_bounded_set_of_queues(make_bus: Buses) -> None:
    """Delays from 1 s to the maximum, of two events, from two buses: 21 delay queues and
    22 delay exchanges in all; each message waits in the level of its highest bit."""
    bus = await make_bus()
    ns = bus.namespace
    seven_days = timedelta(days=7)
    for wait in (1, 2, 3, 0.5, 70, 3600, seven_days, delay.MAX_DELAY):
        await bus.publish(Ping(label=str(wait)), delay=wait)
        await bus.publish(Kick(label=str(wait)), delay=wait)
    other = await make_bus()
    await other.publish(Ping(label="again"), delay=timedelta(minutes=5))

    queues = delay_names(bus.declared_queues | other.declared_queues, ns)
    exchanges = delay_names(bus.declared_exchanges | other.declared_exchanges, ns)
    assert len(queues) == delay.LEVELS == 21
    assert len(exchanges) == delay.LEVELS + 1
    if bus.url.startswith("memory"):  # what the broker holds, not only what the bus says
        held = memory_broker(bus.url.removeprefix("memory://")).queues
        assert len(delay_names(frozenset(held), ns)) == 21
    sizes = await delay_queue_sizes(bus)
    assert sizes[20] == 2  # MAX_DELAY = 2**21 - 1: waits 2**20 s first
    assert sizes[19] == 2  # 7 days = 604,800 s: 2**19 <= it < 2**20
    assert sizes[6] == 2  # 70 s: 64 s first
    assert sizes[11] == 2  # 3600 s: 2048 s first
    assert sizes[8] == 1  # 5 min = 300 s: 256 s first


async def test_a_delay_over_the_maximum_is_a_configuration_error(make_bus: Buses) -> None:
    """Over 2**21 - 1 s, negative, not a number: ConfigurationError, nothing declared."""
    bus = await make_bus()
    too_long = delay.MAX_DELAY + 1
    with pytest.raises(ConfigurationError, match=r"over the maximum .* 2097151 s \(24 days"):
        await bus.publish(Ping(label="x"), delay=too_long)
    with pytest.raises(ConfigurationError, match="through a store"):
        await bus.publish(Ping(label="x"), delay=timedelta(days=25))
    for wrong in (-1, timedelta(seconds=-1), math.nan, math.inf, "5", True):
        with pytest.raises(ConfigurationError, match="a delay"):
            await bus.publish(Ping(label="x"), delay=wrong)  # type: ignore[arg-type]
    assert delay_names(bus.declared_queues, bus.namespace) == set()
    assert delay.broker_seconds(delay.MAX_DELAY) == 2**21 - 1
    assert delay.broker_seconds(0.001) == 1
    assert delay.broker_seconds(timedelta(seconds=2.1)) == 3


# -- what the delay levels need of a transport: topic exchanges, exchange-to-exchange -------


async def test_topic_and_exchange_to_exchange_routing_as_on_rabbitmq(make_bus: Buses) -> None:
    """The in-memory broker routes as RabbitMQ does (this runs on both): ``*`` one word,
    ``#`` any; exchanges bound to exchanges route on, a queue reached twice gets one copy
    (cycles too); the delivery names the exchange published to; a missing exchange is a
    ConfigurationError."""
    bus = await make_bus()
    transport, ns = bus.transport, bus.namespace
    topic, fanout, direct = f"{ns}.topic", f"{ns}.fanout", f"{ns}.direct"
    make_bus.extra_exchanges.update((topic, fanout, direct))
    await transport.declare_exchange(topic, TOPIC)
    await transport.declare_exchange(fanout, FANOUT)
    await transport.declare_exchange(direct, DIRECT)
    await transport.bind_exchange(fanout, topic, "a.*")
    await transport.bind_exchange(topic, fanout)  # a cycle
    await transport.bind_exchange(direct, topic, "#.d")
    queues = {name: f"{ns}.{name}" for name in ("hash_x", "fan", "dq", "exact")}
    make_bus.extra_queues.update(queues.values())
    await transport.declare_queue(QueueSpec(queues["hash_x"], ((topic, "#.x"),)))
    await transport.declare_queue(QueueSpec(queues["fan"], ((fanout, ""),)))
    await transport.declare_queue(QueueSpec(queues["dq"], ((direct, "c.d"),)))
    await transport.declare_queue(QueueSpec(queues["exact"], ((topic, "*.*.x"),)))

    for key in ("a.x", "b.c.x", "x", "a.b", "c.d", "a.d"):
        await transport.publish(Message(key.encode()), topic, key)
    with pytest.raises(Unroutable):
        await transport.publish(Message(b"b.c"), topic, "b.c", mandatory=True)

    got: dict[str, list[tuple[str, str, str]]] = {}
    for name, queue in queues.items():
        async with transport.fetch(queue, 10) as deliveries:
            got[name] = [_seen(d) for d in deliveries]
            for d in deliveries:
                await d.ack()
    assert got == {
        "hash_x": [("a.x", topic, "a.x"), ("b.c.x", topic, "b.c.x"), ("x", topic, "x")],
        "fan": [("a.x", topic, "a.x"), ("a.b", topic, "a.b"), ("a.d", topic, "a.d")],
        "dq": [("c.d", topic, "c.d")],
        "exact": [("b.c.x", topic, "b.c.x")],
    }
    with pytest.raises(ConfigurationError):
        await transport.bind_exchange(f"{ns}.missing", topic, "#")

    # a queue whose messages expire into itself: RabbitMQ drops them as a cycle
    loop = f"{ns}.loop"
    make_bus.extra_queues.add(loop)
    ttl = (("x-message-ttl", 20), ("x-dead-letter-exchange", ""))
    await transport.declare_queue(
        QueueSpec(loop, arguments=(*ttl, ("x-dead-letter-routing-key", loop)))
    )
    await transport.publish(Message(b"round"), "", loop)
    await asyncio.sleep(0.3)
    assert await transport.queue_size(loop) == 0


def _seen(delivery: Delivery) -> tuple[str, str, str]:
    return delivery.message.body.decode(), delivery.exchange, delivery.routing_key


# -- with a store: the outbox row is due after the delay -------------------------------------


@pytest.fixture
async def store(make_bus: Buses, db_url: str) -> AsyncIterator[Store]:
    engine = create_async_engine(db_url)
    store = Store(engine, poll_interval=0.2)
    await store.create_tables()
    yield store
    for bus in make_bus.buses:
        await bus.close()  # the relays use the engine
    await engine.dispose()


@pytest.mark.parametrize("transport", ["memory"], indirect=True)
async def test_with_a_store_a_delayed_row_is_relayed_when_due_across_a_restart(
    store: Store, make_bus: Buses
) -> None:
    """tx.publish(delay=2) and a stored handler's ctx.publish(delay=2): staged with their
    due time, still there after the relaying bus stopped, published by the next relay
    after 2 s and not before, normally (no delay levels on the broker)."""
    seen = Recorder()
    consumer = await make_bus()
    rx, _ = receivers(seen)
    await consumer.start(rx)
    kicked: dict[str, float] = {}
    billing = kicker(kicked, later=2, store=store)
    relaying = await make_bus()
    await relaying.start(billing)

    sent = {"tx": time.monotonic()}
    async with store.transaction() as tx:
        await tx.publish(Ping(label="tx"), delay=2)
    await relaying.publish(Kick(label="ctx"))
    async with asyncio.timeout(WAIT):
        while (await store.status()).pending < 2:  # the handler committed its row
            await asyncio.sleep(0.02)
    await relaying.close()  # no relay runs; the rows wait in the database

    restarted = await make_bus()
    await restarted.start(billing)
    await seen.wait_for(2, timeout=10)
    sent["ctx"] = kicked["ctx"]
    for _, label, at, _, _ in seen.items:
        assert 2.0 - EARLY <= at - sent[label] <= 2.0 + LATE, label
    async with asyncio.timeout(WAIT):  # marked sent once confirmed (maybe after delivery)
        while (await store.status()).pending:
            await asyncio.sleep(0.02)
    for bus in (consumer, relaying, restarted):
        assert delay_names(bus.declared_queues, bus.namespace) == set()
