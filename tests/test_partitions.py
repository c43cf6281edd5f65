"""Partitioned services (#14): events of one ordering key are handled in publish order, one
at a time, across partitions and processes; other keys concurrently. Run on both
transports; a second bus stands for a second process of the service."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import zlib
from dataclasses import dataclass, field

import pytest

from choreo import Bus, ConfigurationError, Event, Retry, Service, topology
from choreo._runtime.balance import assign
from choreo.transports.base import QueueSpec

from .conftest import Buses
from .helpers import WAIT, Recorder
from .test_cli import choreo_cmd

KEYS = [f"SKU-{i:02d}" for i in range(20)]
EVENTS_PER_KEY = 30


class Step(Event, key="sku"):
    sku: str
    seq: int


class Note(Event):
    text: str


@dataclass
class Handling:
    bus: str
    sku: str
    seq: int
    start: float
    end: float | None = None
    attempt: int = 1


@dataclass
class Log:
    handlings: list[Handling] = field(default_factory=list)
    done: Recorder = field(default_factory=Recorder)
    running: int = 0
    most_at_once: int = 0
    alive: dict[str, bool] = field(default_factory=dict)
    gate: asyncio.Event = field(default_factory=asyncio.Event)  # handlers wait for it

    def __post_init__(self) -> None:
        self.gate.set()

    def service(
        self,
        bus: str,
        *,
        partitions: int = 4,
        fail: tuple[str, int] | None = None,
        retry: Retry | None = None,
        sleep: tuple[float, float] = (0.0, 0.004),
    ) -> Service:
        service = Service("catalog", partitions=partitions, concurrency=8, retry=retry)
        self.alive[bus] = True

        @service.on(Step)
        async def handle(event: Step) -> None:
            await self.gate.wait()
            if not self.alive[bus]:  # a "killed" process does nothing more
                await asyncio.sleep(3600)
            handling = Handling(bus, event.sku, event.seq, time.monotonic())
            self.handlings.append(handling)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            try:
                await asyncio.sleep(random.uniform(*sleep))
                if fail == (event.sku, event.seq):
                    raise RuntimeError("this one always fails")
            finally:
                self.running -= 1
                if self.alive[bus]:
                    handling.end = time.monotonic()
            self.done.add((event.sku, event.seq))

        return service

    def by_key(self) -> dict[str, list[Handling]]:
        keys: dict[str, list[Handling]] = {}
        for handling in sorted(self.handlings, key=lambda h: h.start):
            keys.setdefault(handling.sku, []).append(handling)
        return keys

    def assert_no_overlap(self, killed_at: float | None = None) -> None:
        for sku, handlings in self.by_key().items():
            for before, after in itertools.pairwise(handlings):
                end = before.end if before.end is not None else killed_at
                assert end is not None, f"{sku}: {before} never ended"
                assert after.start >= end, f"{sku}: {after} started before {before} ended"

    async def wait_all(self, keys: list[str], count: int) -> None:
        expected = {(sku, seq) for sku in keys for seq in range(count)}
        await self.done.wait_until(lambda items: expected <= set(items), timeout=3 * WAIT)


async def publish_steps(bus: Bus, keys: list[str], count: int, first: int = 0) -> None:
    for seq in range(first, first + count):  # one key's events one after the other, keys at once
        await asyncio.gather(*(bus.publish(Step(sku=sku, seq=seq)) for sku in keys))


CLI_SERVICE = Service("catalog", partitions=4)


@CLI_SERVICE.on(Step)
async def _step(event: Step) -> None: ...


class TestDeclarations:
    def test_the_key_must_be_a_field(self) -> None:
        with pytest.raises(ConfigurationError, match="not a field"):

            class Wrong(Event, key="sku"):
                id: str

    def test_the_bucket_is_crc32_of_the_key(self) -> None:
        assert topology.bucket_of("SKU-1") == zlib.crc32(b"SKU-1") % 1024
        assert topology.routing_key_of("SKU-1", "m1") == str(zlib.crc32(b"SKU-1") % 1024)
        assert topology.routing_key_of(None, "m1") == str(zlib.crc32(b"m1") % 1024)

    def test_the_plan_has_partition_queues_with_their_buckets(self) -> None:
        service = Log().service("a", partitions=8)
        plan = topology.plan([service], "ns")
        queues = {q.name: q for q in plan.queues}
        assert ("ns.catalog.partitions", "direct") in plan.exchanges
        assert ("ns.catalog.partitions", "ns.step", "") in plan.exchange_bindings
        assert "ns.catalog" not in queues
        buckets = []
        for i in range(8):
            spec: QueueSpec = queues[f"ns.catalog.p{i}"]
            assert ("x-single-active-consumer", True) in spec.arguments
            assert ("x-dead-letter-routing-key", "ns.catalog.dlq") in spec.arguments
            assert all(int(key) % 8 == i for _, key in spec.bindings)
            buckets += [int(key) for _, key in spec.bindings]
        assert sorted(buckets) == list(range(1024))

    def test_choreo_topology_shows_the_partitions(self) -> None:
        done = choreo_cmd("topology", "tests.test_partitions:CLI_SERVICE", "--namespace", "ns")
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "ns.catalog.partitions  (direct, durable)" in out
        assert "ns.catalog.partitions <- ns.step" in out
        for i in range(4):
            assert f"  ns.catalog.p{i}\n    <- ns.catalog.partitions  key=256 buckets" in out

    def test_broker_retries_are_refused(self) -> None:
        service = Log().service("a", retry=Retry(attempts=5, delay=2.0))
        with pytest.raises(ConfigurationError, match="waits through the broker"):
            topology.plan([service], "ns")

    def test_partitions_must_be_a_positive_int(self) -> None:
        for wrong in (0, -1, 2000):
            with pytest.raises(ConfigurationError):
                Service("catalog", partitions=wrong)


class TestOrderPerKey:
    async def test_each_key_in_order_keys_concurrently(self, make_bus: Buses) -> None:
        """20 keys x 30 events, 4 partitions, concurrency 8: every key's sequence handled
        in order, never two of one key at once; several keys at once, at most 8."""
        log = Log()
        bus = await make_bus()
        await bus.start(log.service("a"))
        await publish_steps(bus, KEYS, EVENTS_PER_KEY)
        await log.wait_all(KEYS, EVENTS_PER_KEY)
        log.assert_no_overlap()
        for sku, handlings in log.by_key().items():
            assert [h.seq for h in handlings] == list(range(EVENTS_PER_KEY)), sku
        assert 1 < log.most_at_once <= 8

    async def test_a_failing_event_holds_back_only_its_key(self, make_bus: Buses) -> None:
        """Retried in the process, later events of its key wait; other keys go on; once
        dead-lettered, its key continues."""
        log = Log()
        retry = Retry(attempts=3, delay=0.1, multiplier=2.0, in_process_max_delay=1.0)
        bus = await make_bus()
        await bus.start(log.service("a", fail=("BAD", 2), retry=retry, sleep=(0.005, 0.01)))
        await publish_steps(bus, ["BAD", "GOOD"], 20)
        expected = {("BAD", s) for s in range(20) if s != 2} | {("GOOD", s) for s in range(20)}
        await log.done.wait_until(lambda items: expected <= set(items), timeout=3 * WAIT)
        log.assert_no_overlap()
        bad = log.by_key()["BAD"]
        assert [h.seq for h in bad] == [0, 1, 2, 2, 2, *range(3, 20)]
        failing = bad[2:5]
        good_meanwhile = [
            h for h in log.by_key()["GOOD"] if failing[0].start < h.start < failing[-1].start
        ]
        assert good_meanwhile, "the other key waited for the failing one"
        dlq = topology.dlq_name(bus.namespace, "catalog")
        async with asyncio.timeout(WAIT):
            while await bus.transport.queue_size(dlq) < 1:
                await asyncio.sleep(0.05)

    async def test_an_event_without_a_key_is_handled(self, make_bus: Buses) -> None:
        seen = Recorder()
        service = Service("catalog", partitions=4)

        @service.on(Note)
        async def note(event: Note) -> None:
            seen.add(event.text)

        bus = await make_bus()
        await bus.start(service)
        for i in range(10):
            await bus.publish(Note(text=str(i)))
        await bus.publish_json("note", {"text": "json"})
        await seen.wait_until(lambda items: len(set(items)) == 11)


class TestAssignment:
    MEMBERS = ("host-1-aa", "host-2-bb", "host-3-cc")

    def test_each_partition_once_and_evenly(self) -> None:
        for members in range(1, 10):
            for count in (1, 3, 8, 64):
                names = [f"n{i}" for i in range(members)]
                shares = assign(names, count)
                held = sorted(p for share in shares.values() for p in share)
                assert held == list(range(count))
                loads = [len(share) for share in shares.values()]
                assert max(loads) <= -(-count // members), (members, count, loads)

    def test_the_same_whatever_the_order(self) -> None:
        assert assign(self.MEMBERS, 8) == assign(list(reversed(self.MEMBERS)), 8)
        assert sorted(len(s) for s in assign(self.MEMBERS, 8).values()) == [2, 3, 3]

    def test_a_process_joining_moves_few_partitions(self) -> None:
        before = assign(self.MEMBERS, 64)
        after = assign([*self.MEMBERS, "host-4-dd"], 64)
        owner = {p: m for m, share in before.items() for p in share}
        moved = [p for m, share in after.items() for p in share if owner[p] != m]
        assert len(after["host-4-dd"]) == 16
        assert len(moved) <= 24, len(moved)  # 16 must move to the newcomer; few others


async def held_by(buses: list[Bus], loads: list[int]) -> None:
    """Wait until the buses hold partitions of catalog in these numbers (in any order),
    never one partition twice."""
    async with asyncio.timeout(WAIT):
        while sorted(len(bus.partitions_held("catalog")) for bus in buses) != loads:
            await asyncio.sleep(0.02)
    held = [p for bus in buses for p in bus.partitions_held("catalog")]
    assert sorted(held) == sorted(set(held)), held


FAST = 0.5  # partition_heartbeat of the tests: a silent process is gone after 1.5 s


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
class TestProcesses:
    async def test_spread_rebalanced_on_join_and_handed_over_on_stop(
        self, make_bus: Buses, queue_type: str
    ) -> None:
        """One bus takes all 8 partitions; a second joins mid-stream and takes half, a
        third a share; the first stops and the others take its partitions. Every key's
        sequence is handled in order, once, never two of one key at once."""
        log, count = Log(), 60
        buses = {
            name: await make_bus(queue_type=queue_type, partition_heartbeat=FAST)
            for name in ("first", "second", "third")
        }
        service = {name: log.service(name, partitions=8, sleep=(0.005, 0.015)) for name in buses}
        await buses["first"].declare(service["first"])
        await publish_steps(buses["first"], KEYS, 25)  # queued before anyone consumes
        await buses["first"].start(service["first"])
        await held_by([buses["first"]], [8])
        await log.done.wait_for(50, timeout=WAIT)
        await buses["second"].start(service["second"])  # mid-stream
        await held_by([buses["first"], buses["second"]], [4, 4])
        await buses["third"].start(service["third"])
        await held_by(list(buses.values()), [2, 3, 3])
        before = len(log.done.items)
        await publish_steps(buses["first"], KEYS, 25, first=25)
        await log.done.wait_for(before + 100, timeout=WAIT)
        await buses["first"].stop()
        stopped_at = time.monotonic()
        await held_by([buses["second"], buses["third"]], [4, 4])
        await publish_steps(buses["second"], KEYS, 10, first=50)
        await log.wait_all(KEYS, count)
        log.assert_no_overlap()
        for sku, handlings in log.by_key().items():
            assert [h.seq for h in handlings] == list(range(count)), sku
        assert all(h.start < stopped_at for h in log.handlings if h.bus == "first")
        for name in buses:
            assert any(h.bus == name for h in log.handlings), f"{name} handled nothing"
        late = {h.bus for h in log.handlings if h.seq >= 50}
        assert late == {"second", "third"}

    async def test_a_dead_processs_partitions_are_taken_over(
        self, make_bus: Buses, queue_type: str
    ) -> None:
        """A bus's connection closes abruptly mid-stream (as when its process is killed):
        once it has been silent for three heartbeats the other takes its partitions; a
        key's events may repeat, never jump back."""
        log, count = Log(), EVENTS_PER_KEY
        first = await make_bus(queue_type=queue_type, partition_heartbeat=FAST)
        second = await make_bus(queue_type=queue_type, partition_heartbeat=FAST)
        await second.declare(log.service("second"))
        await first.start(log.service("first", partitions=4, sleep=(0.002, 0.008)))
        await second.start(log.service("second", partitions=4, sleep=(0.002, 0.008)))
        await held_by([first, second], [2, 2])
        await publish_steps(second, KEYS, count // 2)

        def busy(bus: str) -> bool:
            return sum(h.bus == bus for h in log.handlings) >= 20

        await log.done.wait_until(lambda _: busy("first") and busy("second"), timeout=3 * WAIT)
        log.alive["first"] = False
        killed_at = time.monotonic()
        await first.transport.close()
        await publish_steps(second, KEYS, count - count // 2, first=count // 2)
        await held_by([second], [4])
        await log.wait_all(KEYS, count)
        log.assert_no_overlap(killed_at)
        for sku, handlings in log.by_key().items():
            seqs = [h.seq for h in handlings]
            assert all(b in (a, a + 1) for a, b in itertools.pairwise(seqs)), f"{sku}: {seqs}"
            assert seqs[0] == 0, sku
            assert seqs[-1] == count - 1, sku
        firsts = {h.sku for h in log.handlings if h.bus == "first"}  # its partitions' keys
        assert firsts
        taken_over = {h.sku for h in log.handlings if h.bus == "second" and h.start > killed_at}
        assert firsts <= taken_over
