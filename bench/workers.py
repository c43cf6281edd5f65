"""``choreo run --workers N``: how consumption scales from 1 to 2 worker processes.

    python -m bench.workers [--n 20000] [--workers 1 2] [--runs 2]

The handler burns BENCH_WORK_US (default 1000) us of CPU per event, so that the workers,
not the broker, are the bottleneck: on a 2-core machine RabbitMQ needs a core of its own
at a few thousand persistent messages per second. Each run fills the queue of
``bench.workload:service`` with N events, starts ``choreo run bench.workload:service
--workers K``, and times how long the backlog takes to drain (until the queue has nothing
ready; the workers then stop with every message acked). Runs alternate between the
worker counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid

from choreo import connect

from .common import check_and_delete
from .workload import Job, service

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


async def drain(url: str, n: int, workers: int) -> float:
    namespace = f"bench-w-{uuid.uuid4().hex[:8]}"
    async with connect(url, namespace=namespace) as bus:
        await bus.declare(service)
        for start in range(0, n, 128):
            await asyncio.gather(
                *(
                    bus.publish(Job(sku=f"SKU-{i}", quantity=i % 10, warehouse="north"))
                    for i in range(start, min(n, start + 128))
                )
            )
        queue = f"{namespace}.{service.name}"
        env = {**os.environ, "CHOREO_BROKER_URL": url, "CHOREO_NAMESPACE": namespace}
        t0 = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "choreo", "run", "bench.workload:service",
            "--workers", str(workers), "--log-level", "WARNING", env=env,
        )  # fmt: skip
        while await bus.transport.queue_size(queue) > 0:  # noqa: ASYNC110 - polls the broker
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - t0
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
        queues, exchanges = sorted(bus.declared_queues), sorted(bus.declared_exchanges)
    left = await check_and_delete(url, queues, exchanges)
    assert not any(left.values()), f"messages left behind: {left}"
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--url", default=os.environ.get("CHOREO_BENCH_URL", DEFAULT_URL))
    args = parser.parse_args()
    rates: dict[int, list[float]] = {k: [] for k in args.workers}
    for run in range(args.runs):
        for workers in args.workers:
            rate = asyncio.run(drain(args.url, args.n, workers))
            rates[workers].append(rate)
            print(f"run {run + 1} workers={workers}: {rate:,.0f} events/s", flush=True)
    base = statistics.median(rates[args.workers[0]])
    print(f"\nchoreo run --workers: backlog of {args.n:,}, median of {args.runs}")
    for workers, values in rates.items():
        median = statistics.median(values)
        print(f"  {workers} worker(s): {median:>8,.0f} events/s  x{median / base:.2f}")


if __name__ == "__main__":
    main()
