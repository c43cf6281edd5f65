"""Replaying the dead letters of a partitioned service (#14): each goes back, through the
partition exchange, by the bucket it was routed with, into the partition queue that owns
its key, behind the events of that key already there; on both transports."""

from __future__ import annotations

import asyncio
import dataclasses

from choreo import Bus, Event, Reject, Service, dlq, topology, wire
from choreo._runtime.deadletter import routing_bucket
from choreo._runtime.settle import Quarantine, Settler

from .conftest import Buses
from .helpers import WAIT, Recorder

PARTITIONS = 4


class StockCounted(Event, key="sku"):
    sku: str
    seq: int


def partition_of(routing_key: str) -> int:
    return int(routing_key) % PARTITIONS


def keys_in_distinct_partitions(count: int) -> list[str]:
    """``count`` ordering keys whose events go to ``count`` different partitions."""
    keys: dict[int, str] = {}
    for i in range(100):
        key = f"SKU-{i}"
        keys.setdefault(partition_of(topology.routing_key_of(key, None)), key)
    assert len(keys) >= count
    return list(keys.values())[:count]


A, B, C, D = keys_in_distinct_partitions(4)


@dataclasses.dataclass
class Catalog:
    """A partitioned service that rejects the events of ``rejected`` keys until ``open``."""

    rejected: set[str]
    open: bool = False
    seen: Recorder = dataclasses.field(default_factory=Recorder)

    def service(self) -> Service:
        service = Service("catalog", partitions=PARTITIONS)

        @service.on(StockCounted)
        async def count(event: StockCounted) -> None:
            if event.sku in self.rejected and not self.open:
                raise Reject(f"not now: {event.sku}")
            self.seen.add((event.sku, event.seq))

        return service

    def handled(self, sku: str) -> list[int]:
        return [seq for key, seq in self.seen.items if key == sku]


def partition_queue(bus: Bus, routing_key: str) -> str:
    return topology.partition_queue_name(bus.namespace, "catalog", partition_of(routing_key))


def dlq_of(bus: Bus) -> str:
    return topology.dlq_name(bus.namespace, "catalog")


async def wait_size(bus: Bus, queue: str, size: int) -> None:
    async with asyncio.timeout(WAIT):
        while await bus.transport.queue_size(queue) != size:
            await asyncio.sleep(0.02)


async def queued(bus: Bus, queue: str) -> list[tuple[str, int]]:
    """(sku, seq) of what ``queue`` holds, in order; left in the queue."""
    async with bus.transport.fetch(queue, 100) as deliveries:
        events = [StockCounted.model_validate_json(d.message.body) for d in deliveries]
    return [(event.sku, event.seq) for event in events]


async def rejected_events(make_bus: Buses, catalog: Catalog, events: list[tuple[str, int]]) -> Bus:
    """Run the service until ``events`` (and one event of ``C``, handled) are published and
    the rejected ones dead-lettered; return a stopped bus."""
    bus = await make_bus()
    await bus.start(catalog.service())
    for sku, seq in [*events, (C, 0)]:
        await bus.publish(StockCounted(sku=sku, seq=seq))
    dead = sum(sku in catalog.rejected for sku, _ in events)
    await wait_size(bus, dlq_of(bus), dead)
    await catalog.seen.wait_until(lambda items: (C, 0) in items)
    await bus.stop()
    return bus


async def test_replay_puts_each_dead_event_into_its_keys_partition(make_bus: Buses) -> None:
    """Dead letters of two keys: replay sends each to the partition of its key, after an
    event of the key published meanwhile; handled there in that order."""
    catalog = Catalog(rejected={A, B})
    bus = await rejected_events(make_bus, catalog, [(A, 0), (A, 1), (B, 0)])
    async with bus.transport.fetch(dlq_of(bus), 10) as letters:
        recorded = {d.message.headers.get(wire.ROUTING_KEY_HEADER) for d in letters}
    assert recorded == {topology.routing_key_of(A, None), topology.routing_key_of(B, None)}
    listed = sorted(str(letter.bucket) for letter in await dlq.list_dead_letters(bus, "catalog"))
    assert listed == sorted(topology.routing_key_of(key, None) for key in (A, A, B))
    other = await make_bus()
    await other.publish(StockCounted(sku=A, seq=2))  # queued before the replay

    assert await dlq.replay(other, "catalog") == 3

    assert await other.transport.queue_size(dlq_of(other)) == 0
    a_queue = partition_queue(other, topology.routing_key_of(A, None))
    b_queue = partition_queue(other, topology.routing_key_of(B, None))
    assert await queued(other, a_queue) == [(A, 2), (A, 0), (A, 1)]
    assert await queued(other, b_queue) == [(B, 0)]
    catalog.open = True
    await other.start(catalog.service())
    await catalog.seen.wait_until(lambda _: len(catalog.handled(A)) == 3 and catalog.handled(B))
    assert catalog.handled(A) == [2, 0, 1]  # ordered by when each was replayed
    assert catalog.handled(B) == [0]


async def test_a_broker_dead_letter_replays_by_its_x_death_routing_key(make_bus: Buses) -> None:
    """A message the broker dead-lettered (its per-message expiration passed in a partition
    queue) records no choreo header: the routing key in its x-death entry routes it back.
    It was published with D's bucket, not its key's, to show that this is what decides."""
    catalog = Catalog(rejected=set())
    bus = await make_bus()
    await bus.declare(catalog.service())
    message = wire.encode(StockCounted(sku=A, seq=0))
    message.expiration = 0.05
    exchange = topology.exchange_name(bus.namespace, StockCounted.__event_name__)
    d_bucket = topology.routing_key_of(D, None)
    await bus.transport.publish(message, exchange, d_bucket, mandatory=True)
    await wait_size(bus, dlq_of(bus), 1)
    (letter,) = await dlq.list_dead_letters(bus, "catalog")
    assert letter.error_type == "Expired"
    assert letter.bucket == d_bucket  # from x-death

    assert await dlq.replay(bus, "catalog", message.message_id) == 1

    assert await queued(bus, partition_queue(bus, d_bucket)) == [(A, 0)]
    await bus.start(catalog.service())
    await catalog.seen.wait_until(lambda items: (A, 0) in items)


def test_the_bucket_a_dead_letter_records() -> None:
    """The routing key the event was delivered with when it is a bucket; else (from the
    quarantine queue, or through the delay levels) the bucket of its ordering key."""
    message = wire.encode(StockCounted(sku=A, seq=0))
    assert routing_bucket(message, "17") == "17"
    for delivered_with in ("ns.catalog.p1.suspect", "3.0.1.ns.stock_counted", "", "1024"):
        assert routing_bucket(message, delivered_with) == topology.routing_key_of(A, None)


async def test_a_quarantined_event_keeps_its_bucket(make_bus: Buses) -> None:
    """The copy moved to a partition's quarantine says its bucket, which its routing key
    there (the quarantine queue's name) no longer does: a dead letter the broker makes of
    it later (a quorum queue's delivery limit) still replays to its key's partition."""
    bus = await make_bus()
    service = Catalog(set()).service()
    await bus.declare(service)
    await bus.publish(StockCounted(sku=B, seq=0))
    bucket = topology.routing_key_of(B, None)
    partition = partition_queue(bus, bucket)
    suspects = topology.suspect_queue_name(partition)
    dead = topology.dlq_name(bus.namespace, "catalog")
    settler = Settler(bus.transport, service="catalog", dlq=dead)
    async with bus.transport.fetch(partition, 1) as (delivery,):
        await settler.settle(delivery, Quarantine(suspects))
    async with bus.transport.fetch(suspects, 1) as (moved,):
        assert moved.message.headers[wire.ROUTING_KEY_HEADER] == bucket
        await moved.ack()
