"""``choreo topology --apply`` after a change of partition count (#14): the partition queues
end up bound exactly as the new plan says (each bucket to one queue: no publish delivered
twice), queues beyond the count are deleted when empty and kept, unbound and reported when
they hold messages or are consumed; ``--dry-run`` changes nothing. On the in-memory broker
(the CLI in process), on RabbitMQ with rabbitmqctl (the CLI as a subprocess) and through
the management API of a throw-away node."""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import choreo
from choreo import ConfigurationError, Event, Service, topology
from choreo.cli import app
from choreo.tooling import bindings
from choreo.transports import memory
from choreo.transports.memory import MemoryTransport

from .conftest import Buses, delete_on_rabbitmq, unique
from .helpers import WAIT
from .support.rabbit_nodes import RabbitNodes, started
from .test_cli import choreo_cmd
from .test_cli_topology import bindings as broker_bindings


class Item(Event, name="repartition_item", key="sku"):
    sku: str


def _service(partitions: int | None) -> Service:
    service = Service("stock", partitions=partitions)

    @service.on(Item)
    async def handle(event: Item) -> None: ...

    return service


EIGHT, FOUR, PLAIN = _service(8), _service(4), _service(None)
TARGET = {8: "tests.test_topology_repartition:EIGHT", 4: "tests.test_topology_repartition:FOUR"}
PLAIN_TARGET = "tests.test_topology_repartition:PLAIN"


def key_in(partition: int, count: int, skip: int = 0) -> str:
    """A key whose bucket lands in ``partition`` of ``count`` (the ``skip``-th such key)."""
    keys = (f"K{i}" for i in itertools.count())
    found = (k for k in keys if topology.bucket_of(k) % count == partition)
    return next(itertools.islice(found, skip, None))


def wanted(ns: str, count: int) -> set[tuple[str, str, str]]:
    """(exchange, queue, key) of the partition queues' bindings with ``count`` partitions."""
    plan = topology.plan([_service(count)], ns)
    return {(e, q.name, k) for q in plan.queues if ".p" in q.name for e, k in q.bindings}


def keys_text(ns: str, count: int, partition: int, but: int | None = None) -> str:
    """How the CLI sums up the binding keys of ``partition`` of ``count`` (without those
    it keeps with ``but`` partitions): ``N keys K1, K2, K3, ...`` as the plan spells them."""
    queue = topology.partition_queue_name(ns, "stock", partition)
    keys = {k for e, q, k in wanted(ns, count) if q == queue}
    keys -= {k for e, q, k in wanted(ns, but) if q == queue} if but else set()
    first = sorted(keys, key=lambda key: (len(key), key))[:3]
    return f"{len(keys)} keys {', '.join(first)}, ..."


def shape(ns: str) -> re.Pattern[str]:
    return re.compile(re.escape(f"{ns}.stock") + r"(\.p\d+)?")


async def queue_bindings(bus: choreo.Bus) -> set[tuple[str, str, str]]:
    """(exchange, queue, key) of every binding to the service's queues, on the broker."""
    ns, transport = bus.namespace, bus.transport
    if isinstance(transport, MemoryTransport):
        queues = [name for name in transport.broker.queues if shape(ns).fullmatch(name)]
        return {(e, q, k) for q in queues for e, k in transport.broker.bindings(q)}
    listed = await asyncio.to_thread(broker_bindings, ns)
    return {row for row in listed if shape(ns).fullmatch(row[1])}


async def size(bus: choreo.Bus, queue: str) -> int | None:
    """Messages ready in ``queue``; None when it is not on the broker."""
    try:
        return await bus.transport.queue_size(queue)
    except ConfigurationError:
        return None


async def cli(url: str, ns: str, *args: str) -> tuple[int, str]:
    """``choreo topology`` as a subprocess, or in process (a thread) for memory://."""
    common = ("--broker", url, "--namespace", ns)
    if url.startswith("memory://"):
        done = await asyncio.to_thread(CliRunner().invoke, app, ["topology", *args, *common])
        return done.exit_code, done.output
    env = {"CHOREO_MANAGEMENT_URL": ""}  # rabbitmqctl, whatever the caller's environment
    proc = await asyncio.to_thread(choreo_cmd, "topology", *args, *common, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def lines(text: str, prefix: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(prefix)]


def forget_later(make_bus: Buses) -> None:
    ns = make_bus.namespace
    for count in (4, 8, None):
        plan = topology.plan([_service(count)], ns)
        make_bus.extra_queues |= {queue.name for queue in plan.queues}
        make_bus.extra_exchanges |= {name for name, _ in plan.exchanges}


async def publish_one_per_partition(bus: choreo.Bus, count: int) -> dict[str, int]:
    """One event per partition of ``count`` (two keys each); how many each queue gets."""
    expected: dict[str, int] = {}
    for partition, skip in itertools.product(range(count), range(2)):
        await bus.publish(Item(sku=key_in(partition, count, skip)))
        name = topology.partition_queue_name(bus.namespace, "stock", partition)
        expected[name] = expected.get(name, 0) + 1
    return expected


async def test_eight_to_four(make_bus: Buses, transport: str) -> None:
    """8 -> 4 with p5 holding 3 events: --dry-run changes nothing; --apply leaves exactly
    the 4 partitions' bindings, deletes the empty p4, p6, p7, keeps p5 (unbound, its 3
    events) and says how to drain it; each later publish reaches one queue."""
    forget_later(make_bus)
    bus = await make_bus()
    ns, url = bus.namespace, make_bus.url
    code, out = await cli(url, ns, TARGET[8], "--apply")
    assert code == 0, out
    assert await queue_bindings(bus) == wanted(ns, 8)
    for skip in range(3):
        await bus.publish(Item(sku=key_in(5, 8, skip)))
    p = [topology.partition_queue_name(ns, "stock", i) for i in range(8)]

    code, out = await cli(url, ns, TARGET[4], "--apply", "--dry-run")
    assert code == 0, out
    assert "dry run: nothing declared" in out
    assert lines(out, "would unbind ") == [
        f"would unbind {p[i]} <- {ns}.stock.partitions  {keys_text(ns, 8, i)}" for i in range(4, 8)
    ]
    assert len(lines(out, "would bind ")) == 4  # p0..p3 gain b % 8 == 4..7
    assert lines(out, "would delete ") == [
        f"would delete {p[i]}: empty, not a partition any more" for i in (4, 6, 7)
    ]
    assert lines(out, "would keep ") == [
        f"would keep {p[5]}: 3 message(s), which no worker of 4 partition(s) reads "
        "(unbound: nothing new reaches it)"
    ]
    assert await queue_bindings(bus) == wanted(ns, 8)
    assert [await size(bus, name) for name in p] == [0, 0, 0, 0, 0, 3, 0, 0]

    code, out = await cli(url, ns, TARGET[4], "--apply")
    assert code == 0, out
    assert "declared on" in out
    assert len(lines(out, "unbound ")) == 4
    assert lines(out, "deleted ") == [
        f"deleted {p[i]}: empty, not a partition any more" for i in (4, 6, 7)
    ]
    assert lines(out, "kept ") == [
        f"kept {p[5]}: 3 message(s), which no worker of 4 partition(s) reads "
        "(unbound: nothing new reaches it)"
    ]
    assert f"move its messages to {ns}.stock.partitions keeping their routing keys" in out
    assert await queue_bindings(bus) == wanted(ns, 4)
    assert [await size(bus, name) for name in p] == [0, 0, 0, 0, None, 3, None, None]

    expected = await publish_one_per_partition(bus, 8)  # keys of all 8 old partitions
    by_new = {p[i]: 0 for i in range(4)}
    for partition, skip in itertools.product(range(8), range(2)):
        by_new[p[topology.bucket_of(key_in(partition, 8, skip)) % 4]] += 1
    assert sum(expected.values()) == 16
    assert {name: await size(bus, name) for name in p[:4]} == by_new  # each once
    assert await size(bus, p[5]) == 3

    code, out = await cli(url, ns, TARGET[4], "--apply")  # again: only p5 to report
    assert code == 0, out
    assert lines(out, "unbound ") == lines(out, "deleted ") == []
    assert len(lines(out, "kept ")) == 1


@pytest.mark.parametrize("transport", ["memory"])  # RabbitMQ: test_eight_to_four
async def test_four_to_eight(make_bus: Buses, transport: str) -> None:
    """4 -> 8: p0..p3 keep only b % 8 == i, p4..p7 get the rest; each later publish
    reaches one queue, the one of its bucket % 8; nothing is deleted."""
    forget_later(make_bus)
    bus = await make_bus()
    ns, url = bus.namespace, make_bus.url
    code, out = await cli(url, ns, TARGET[4], "--apply")
    assert code == 0, out
    assert "nothing to rebind" in out
    await bus.publish(Item(sku=key_in(1, 8, 0)))
    await bus.publish(Item(sku=key_in(5, 8, 0)))  # in p1 too, with 4 partitions
    p = [topology.partition_queue_name(ns, "stock", i) for i in range(8)]

    code, out = await cli(url, ns, TARGET[8], "--apply")
    assert code == 0, out
    assert lines(out, "unbound ") == [
        f"unbound {p[i]} <- {ns}.stock.partitions  {keys_text(ns, 4, i, but=8)}" for i in range(4)
    ]
    assert lines(out, "deleted ") == lines(out, "kept ") == []
    assert await queue_bindings(bus) == wanted(ns, 8)
    assert [await size(bus, name) for name in p] == [0, 2, 0, 0, 0, 0, 0, 0]

    expected = await publish_one_per_partition(bus, 8)
    assert {name: await size(bus, name) for name in p} == {
        name: count + (2 if name == p[1] else 0) for name, count in expected.items()
    }

    code, out = await cli(url, ns, TARGET[8], "--apply")
    assert code == 0, out
    assert "nothing to rebind: the partition queues are bound as the plan says" in out


@pytest.mark.parametrize("transport", ["memory"])  # RabbitMQ: test_eight_to_four
async def test_from_one_queue_to_partitions(make_bus: Buses, transport: str) -> None:
    """An unpartitioned service made partitioned: its old queue is unbound from the event's
    exchange, and kept while it holds messages; deleted once empty."""
    forget_later(make_bus)
    bus = await make_bus()
    ns, url = bus.namespace, make_bus.url
    code, out = await cli(url, ns, PLAIN_TARGET, "--apply")
    assert code == 0, out
    await bus.publish(Item(sku="A"))
    code, out = await cli(url, ns, TARGET[4], "--apply")
    assert code == 0, out
    assert lines(out, "unbound ") == [f"unbound {ns}.stock <- {ns}.repartition_item"]
    assert lines(out, "kept ")[0].startswith(f"kept {ns}.stock: 1 message(s)")
    assert await queue_bindings(bus) == wanted(ns, 4)
    await bus.transport.purge(f"{ns}.stock")
    code, out = await cli(url, ns, TARGET[4], "--apply")
    assert code == 0, out
    assert lines(out, "deleted ") == [f"deleted {ns}.stock: empty, not a partition any more"]
    assert await size(bus, f"{ns}.stock") is None


async def test_a_consumed_queue_beyond_the_count_is_kept() -> None:
    """A worker of the old count still consumes p4..p7: they are reported with their
    consumers, never deleted."""
    name = uuid.uuid4().hex
    url = f"memory://{name}"
    try:
        async with choreo.connect(url, namespace="ns") as bus:
            await bus.start(EIGHT)
            transport = bus.transport
            assert isinstance(transport, MemoryTransport)
            async with asyncio.timeout(WAIT):  # the partition workers subscribe
                while not all(
                    transport.broker.queues[f"ns.stock.p{i}"].consumers for i in range(8)
                ):
                    await asyncio.sleep(0.01)
            found = await bindings.repartition(bus.transport, FOUR, "ns", url)
            assert [(o.name, o.consumers) for o in found.orphans] == [
                (f"ns.stock.p{i}", 1) for i in range(4, 8)
            ]
            assert len(found.stale) == 4 * 128
            assert found.partitions == 4
            assert found.source == "the in-memory broker"
    finally:
        memory.forget(name)


def test_apply_of_a_partitioned_service_needs_a_way_to_list_bindings() -> None:
    """Without rabbitmqctl or --management, --apply of a partitioned service says so before
    declaring anything; --dry-run needs --apply or --prune."""
    no_ctl = {"PATH": str(Path(sys.executable).parent), "CHOREO_MANAGEMENT_URL": ""}
    url = "amqp://guest:guest@127.0.0.1:1/"
    done = choreo_cmd("topology", TARGET[4], "--apply", "--broker", url, env=no_ctl)
    assert done.returncode == 2
    assert "pass --management" in done.stderr
    done = choreo_cmd("topology", TARGET[4], "--dry-run", "--broker", "memory://")
    assert done.returncode == 2
    assert "--dry-run goes with --prune or --apply" in done.stderr


# ---- the management API of a throw-away node -----------------------------------------------


@pytest.fixture(scope="module")
def managed() -> Iterator[RabbitNodes]:
    """choreo-t9@localhost, AMQP on 5699, management API on 15699."""
    with started(1, first=9, plugins=("rabbitmq_management",)) as nodes:
        yield nodes


@pytest.mark.broker
@pytest.mark.cluster
async def test_eight_to_four_through_the_management_api(managed: RabbitNodes) -> None:
    """rabbitmqctl off the PATH: queues and bindings are listed by the management API; the
    node's rabbitmqctl confirms the result."""
    node = managed.node(9)
    ns = unique("repart")
    env = {"PATH": str(Path(sys.executable).parent), "CHOREO_MANAGEMENT_URL": ""}
    common = ("--broker", node.url, "--namespace", ns, "--management", node.management_url)
    bus = await choreo.connect(node.url, namespace=ns)
    try:
        applied = await asyncio.to_thread(
            choreo_cmd, "topology", TARGET[8], "--apply", *common, env=env
        )
        assert applied.returncode == 0, applied.stderr
        await bus.publish(Item(sku=key_in(6, 8)))
        done = await asyncio.to_thread(
            choreo_cmd, "topology", TARGET[4], "--apply", *common, env=env
        )
        assert done.returncode == 0, done.stderr
        assert f"listed by the management API at {node.management_url}" in done.stdout
        assert len(lines(done.stdout, "unbound ")) == 4
        assert len(lines(done.stdout, "deleted ")) == 3
        assert lines(done.stdout, "kept ")[0].startswith(f"kept {ns}.stock.p6: 1 message(s)")
        listing = managed.ctl(
            9, "list_bindings", "-q", "--no-table-headers",
            "source_name", "destination_name", "routing_key",
        )  # fmt: skip
        rows = {tuple(line.split("\t")) for line in listing.splitlines()}
        assert {r for r in rows if r[0] and shape(ns).fullmatch(r[1])} == wanted(ns, 4)
        queues = managed.ctl(9, "list_queues", "-q", "--no-table-headers", "name").split()
        assert sorted(q for q in queues if shape(ns).fullmatch(q)) == [
            f"{ns}.stock.p{i}" for i in (0, 1, 2, 3, 6)
        ]
    finally:
        await bus.close()
        plan = topology.plan([EIGHT], ns)
        queues = {queue.name for queue in plan.queues}
        await delete_on_rabbitmq(node.url, queues, {name for name, _ in plan.exchanges})
