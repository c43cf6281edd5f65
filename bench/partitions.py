"""Partitioned services (#14): throughput in order per key vs the same service unordered,
on 1 and 2 processes, and how long the partitions of a worker killed with SIGKILL wait.

    python -m bench.partitions [--n 8000] [--keys 400] [--runs 1] [--heartbeat 1.0 0.5]

Both services are in ``bench.workload``: ``bench-plain`` (one queue) and
``bench-partitioned`` (8 partitions, ordered per ``sku``), with the same handler, which
burns BENCH_WORK_US (default 1000) us of CPU and records its start and end. Each run
starts K separate ``choreo run`` processes (as on K hosts), waits until every one has
handled events (the partitioned service: until they share the partitions), then
publishes N events of ``--keys`` keys. Throughput is counted in the steady window, from
when the last process handled its first event of the run to when the first one handled
its last: startup and the tail of an uneven share are left out. Processes share the
2 cores with RabbitMQ and the publisher, as they would on a small host.

Rebalance: 2 processes of the partitioned service under load, one killed with SIGKILL;
the time until the other handles an event of a partition the killed one held, and the
time until it holds all 8 partitions (``--heartbeat``: the processes' announcement
period, ``choreo run --partition-heartbeat``; a process silent for 3 is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from choreo import Bus, Service, connect, topology

from .common import check_and_delete
from .workload import LINE, RECORDS_ENV, Keyed, partitioned, plain

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
SHARE = re.compile(rb"takes partitions ([\d, ]+|none) of 8 \((\d+) process")


@dataclass(frozen=True, slots=True)
class Record:
    start: float
    end: float
    sku: str
    pid: int


def records(folder: Path) -> list[Record]:
    found = []
    for path in folder.glob("*.log"):
        pid = int(path.stem)
        for line in path.read_bytes().splitlines():
            start, end, sku = line.split()
            found.append(Record(float(start), float(end), sku.decode(), pid))
    return found


def handled(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.log")) // LINE


class Workers:
    """K ``choreo run`` processes of one service, their logs and records in a temp folder."""

    def __init__(self, url: str, namespace: str, service: Service, heartbeat: float) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bench-partitions-"))
        self.env = {
            **os.environ, "CHOREO_BROKER_URL": url, "CHOREO_NAMESPACE": namespace,
            RECORDS_ENV: str(self.folder),
        }  # fmt: skip
        self.target = f"bench.workload:{'partitioned' if service.partitions else 'plain'}"
        self.heartbeat = heartbeat
        self.processes: list[asyncio.subprocess.Process] = []
        self.logs: list[Path] = []

    async def start(self, count: int) -> None:
        for _ in range(count):
            log = self.folder / f"worker-{len(self.logs)}.out"
            self.logs.append(log)
            args = ["-m", "choreo", "run", self.target, "--log-level", "INFO"]
            args += ["--partition-heartbeat", str(self.heartbeat)]
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, *args, env=self.env, stdout=out, stderr=out
                )
            self.processes.append(process)

    def shares(self, since: int = 0) -> list[tuple[int, int] | None]:
        """(partitions held, processes seen) by the last line of each log (past byte
        ``since``), if any."""
        found: list[tuple[int, int] | None] = []
        for log in self.logs:
            lines = SHARE.findall(log.read_bytes()[since:])
            held = lines[-1][0].split(b", ") if lines else None
            found.append(None if held is None else (len(held), int(lines[-1][1])))
        return found

    async def until(self, check: object, what: str, timeout: float = 60.0) -> None:
        began = time.monotonic()
        while not check():  # type: ignore[operator]
            if time.monotonic() - began > timeout:
                raise SystemExit(f"bench.partitions: not within {timeout:g}s: {what}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            await process.wait()


async def publish(bus: Bus, n: int, keys: int) -> None:
    for first in range(0, n, 256):
        await asyncio.gather(
            *(
                bus.publish(Keyed(sku=f"K-{i % keys:06d}", seq=i // keys))
                for i in range(first, min(n, first + 256))
            )
        )


def steady_rate(found: list[Record]) -> float:
    """Events per second between the last first-handling and the first last-handling of
    the processes (all of them busy)."""
    pids = {r.pid for r in found}
    began = max(min(r.start for r in found if r.pid == pid) for pid in pids)
    ended = min(max(r.end for r in found if r.pid == pid) for pid in pids)
    inside = sum(1 for r in found if began <= r.end <= ended)
    return inside / (ended - began)


async def throughput(url: str, service: Service, processes: int, n: int, keys: int) -> float:
    namespace = f"bench-p-{uuid.uuid4().hex[:8]}"
    async with connect(url, namespace=namespace) as bus:
        await bus.declare(service)
        workers = Workers(url, namespace, service, heartbeat=1.0)
        try:
            await workers.start(processes)
            if service.partitions:
                even = {1: [8], 2: [4, 4]}[processes]
                await workers.until(
                    lambda: (
                        sorted(s[0] for s in workers.shares() if s) == even
                        and all(s and s[1] == processes for s in workers.shares())
                    ),
                    "the partitions shared",
                )
            else:
                await workers.until(
                    lambda: all(b"consuming" in log.read_bytes() for log in workers.logs),
                    "every process consuming",
                )
            await publish(bus, n, keys)
            await workers.until(lambda: handled(workers.folder) >= n, f"{n} events handled")
        finally:
            await workers.stop()
        rate = steady_rate(records(workers.folder))
        queues, exchanges = sorted(bus.declared_queues), sorted(bus.declared_exchanges)
    await check_and_delete(url, queues, exchanges)
    return rate


async def rebalance(url: str, n: int, keys: int, heartbeat: float) -> tuple[float, float]:
    """Seconds from the SIGKILL of one of 2 processes until the other handles an event of
    a partition the killed one held, and until it holds all 8."""
    namespace = f"bench-r-{uuid.uuid4().hex[:8]}"
    async with connect(url, namespace=namespace) as bus:
        await bus.declare(partitioned)
        workers = Workers(url, namespace, partitioned, heartbeat)
        try:
            await workers.start(2)
            await workers.until(
                lambda: sorted(s[0] for s in workers.shares() if s) == [4, 4],
                "the partitions shared",
            )
            await publish(bus, n, keys)
            await workers.until(lambda: handled(workers.folder) >= n // 4, "a quarter handled")
            victim, survivor = workers.processes
            logged = workers.logs[1].stat().st_size
            victim.kill()
            killed_at = time.monotonic()
            await victim.wait()
            await workers.until(
                lambda: workers.shares(logged)[1] == (8, 1), "the survivor holding 8"
            )
            all_held = time.monotonic() - killed_at
            await workers.until(lambda: handled(workers.folder) >= n, f"{n} events handled")
        finally:
            await workers.stop()
        found = records(workers.folder)
        orphaned = {
            topology.bucket_of(r.sku) % 8 for r in found if r.pid == victim.pid
        }  # the partitions the killed one held
        resumed = min(
            r.start
            for r in found
            if r.pid == survivor.pid
            and r.start > killed_at
            and topology.bucket_of(r.sku) % 8 in orphaned
        )
        queues, exchanges = sorted(bus.declared_queues), sorted(bus.declared_exchanges)
    await check_and_delete(url, queues, exchanges)
    return resumed - killed_at, all_held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=8000)
    parser.add_argument("--keys", type=int, default=400)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--heartbeat", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--url", default=os.environ.get("CHOREO_BENCH_URL", DEFAULT_URL))
    args = parser.parse_args()
    cases = [(s, k) for k in (1, 2) for s in (plain, partitioned)]
    rates: dict[tuple[str, int], list[float]] = {(s.name, k): [] for s, k in cases}
    for run in range(args.runs):
        for service, processes in cases:
            rate = asyncio.run(throughput(args.url, service, processes, args.n, args.keys))
            rates[service.name, processes].append(rate)
            print(f"run {run + 1} {service.name} x{processes}: {rate:,.0f} events/s", flush=True)
    print(f"\n{args.n:,} events of {args.keys} keys, 1 ms CPU each; median of {args.runs}")
    median = {case: statistics.median(values) for case, values in rates.items()}
    for processes in (1, 2):
        base = median[plain.name, processes]
        ordered = median[partitioned.name, processes]
        print(
            f"  {processes} process(es): unordered {base:>6,.0f}/s   8 partitions "
            f"{ordered:>6,.0f}/s  x{ordered / base:.2f} of unordered"
        )
    for name in (plain.name, partitioned.name):
        print(f"  {name}: 2 processes x{median[name, 2] / median[name, 1]:.2f} of 1")
    for heartbeat in args.heartbeat:
        resumed, all_held = asyncio.run(rebalance(args.url, args.n, args.keys, heartbeat))
        print(
            f"  kill -9 of 1 of 2 (heartbeat {heartbeat:g}s): orphaned partitions consumed "
            f"again after {resumed:.2f}s, all 8 on the survivor after {all_held:.2f}s"
        )


if __name__ == "__main__":
    main()
