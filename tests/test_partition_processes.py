"""Partitions (#14) with real processes and a real RabbitMQ: three ``choreo run`` workers
of one service with 8 partitions, 50 keys x 200 events, while one worker is killed with
SIGKILL, another stopped with SIGTERM and a new one joins, all mid-stream.

The service is in tests/fixtures/ordered.py: each handling leaves a line (key, seq, pid,
start, end). For every key, in the order the handlings started:

* seq 0 first, then each next one is ``seq + 1`` of the one before, or (a redelivery)
  one already handled, and that only right after a handling by the process killed with
  SIGKILL: its unacked events come back, in order, to the next owner. Nothing else
  jumps back, nothing is skipped, every event is handled;
* a handling never starts before the previous one of its key ended (no overlap across
  processes);
* the processes alive at the end share the partitions (4 and 4) and both handle the
  last events.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from choreo import Bus

from .conftest import Buses
from .fixtures import ordered
from .test_store_processes import Processes, exited, stop, until

pytestmark = [pytest.mark.broker, pytest.mark.slow]

KEYS = [f"SKU-{i:03d}" for i in range(50)]
EVENTS = 200
WAIT = 60.0
KILL_AT, TERM_AT, JOIN_AT = 60, 110, 150  # after publishing this many events of each key


@pytest.fixture
def transport() -> str:
    return "rabbitmq"


@dataclass(frozen=True)
class Handling:
    sku: str
    seq: int
    pid: int
    start: float
    end: float


@pytest.fixture
def workers(tmp_path: Path, make_bus: Buses) -> Iterator[Processes]:
    records = tmp_path / "records"
    records.mkdir()
    env = {
        "CHOREO_BROKER_URL": make_bus.url,
        "CHOREO_NAMESPACE": make_bus.namespace,
        ordered.RECORDS_ENV: str(records),
        ordered.HANDLER_ENV: "10",
    }
    running = Processes(tmp_path, {**os.environ, **env})
    try:
        yield running
    finally:
        running.kill_all()


def start(workers: Processes, name: str) -> int:
    args = ["-m", "choreo", "run", "tests.fixtures.ordered:ordered", "--log-level", "INFO"]
    args += ["--partition-heartbeat", "0.5"]  # a process silent for 1.5 s is gone
    return workers.start(name, args).pid


SHARE = re.compile(r"takes partitions ([\d, ]+|none) of 8 \((\d+) process")


def shares(workers: Processes, names: list[str]) -> dict[str, tuple[str, str] | None]:
    """(partitions, processes) of the last 'takes partitions' line of each one's log."""
    found: dict[str, tuple[str, str] | None] = {}
    for name in names:
        lines = SHARE.findall(workers.logs[name][-1].read_text(errors="replace"))
        found[name] = lines[-1] if lines else None
    return found


async def balanced(workers: Processes, names: list[str]) -> None:
    """Wait until each of ``names`` holds its share of the 8 partitions among them all."""
    expected = {1: [8], 2: [4, 4], 3: [2, 3, 3]}[len(names)]

    async def check() -> bool:
        found = shares(workers, names)
        if any(share is None or int(share[1]) != len(names) for share in found.values()):
            return False
        held = [share[0].split(", ") for share in found.values() if share]
        return sorted(len(h) for h in held) == expected

    await until(check, WAIT, f"{names} sharing the partitions {expected}")


def handlings(records: Path) -> list[Handling]:
    found = []
    for path in records.glob("*.log"):
        for line in path.read_text().splitlines():
            sku, seq, pid, began, ended = line.split()
            found.append(Handling(sku, int(seq), int(pid), float(began), float(ended)))
    return found


async def publish(bus: Bus, first: int, last: int) -> None:
    for seq in range(first, last):  # a key's events one after the other, keys at once
        await asyncio.gather(*(bus.publish(ordered.Step(sku=sku, seq=seq)) for sku in KEYS))


async def test_order_per_key_across_kill_stop_and_join(
    make_bus: Buses, workers: Processes, tmp_path: Path
) -> None:
    bus = await make_bus()
    await bus.declare(ordered.ordered)
    pids = {name: start(workers, name) for name in ("a", "b", "c")}
    await balanced(workers, ["a", "b", "c"])

    await publish(bus, 0, KILL_AT)
    workers.started[0].kill()  # a: SIGKILL, its unacked events go back to the queue
    assert await exited(workers.started[0]) == -signal.SIGKILL
    await publish(bus, KILL_AT, TERM_AT)
    terminating = asyncio.ensure_future(stop(workers.started[1]))  # b: SIGTERM
    await publish(bus, TERM_AT, JOIN_AT)
    assert await terminating == 0
    pids["d"] = start(workers, "d")
    await balanced(workers, ["c", "d"])
    joined = time.monotonic()
    await publish(bus, JOIN_AT, EVENTS)

    records = tmp_path / "records"
    expected = {(sku, seq) for sku in KEYS for seq in range(EVENTS)}

    async def all_handled() -> bool:
        return expected <= {(h.sku, h.seq) for h in handlings(records)}

    await until(all_handled, WAIT, "every event handled")
    found = handlings(records)
    killed = pids["a"]
    replays = 0
    for sku in KEYS:
        mine = sorted((h for h in found if h.sku == sku), key=lambda h: h.start)
        assert mine[0].seq == 0, sku
        for before, after in itertools.pairwise(mine):
            assert after.start >= before.end, f"{sku}: {after} overlaps {before}"
            if after.seq == before.seq + 1:
                continue
            assert after.seq <= before.seq, f"{sku}: skipped from {before} to {after}"
            assert before.pid == killed != after.pid, f"{sku}: {after} jumps back after {before}"
            replays += 1
    by_pid = {name: [h for h in found if h.pid == pid] for name, pid in pids.items()}
    assert all(by_pid.values()), {name: len(h) for name, h in by_pid.items()}
    for name in ("c", "d"):  # the live ones share the end of the stream
        assert any(h.start > joined for h in by_pid[name]), f"{name} handled none at the end"
    assert not any(h.start > joined for h in by_pid["a"] + by_pid["b"])
    print(f"{len(found)} handlings of {len(expected)} events, {replays} replayed after kill -9")
