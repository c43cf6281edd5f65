"""Fan-out to three services: choreo against hand-written aio-pika, interleaved.

    python -m bench.fanout [--n 20000] [--runs 3] [--variant inproc|split|backlog]

Each run is a fresh subprocess (clean CPU and RSS figures) that publishes N confirmed,
persistent events to one fanout exchange consumed by three durable queues, and ends when
the 3N deliveries were validated and acked; it then checks that no message was left ready
or unacked and deletes its queues. Runs alternate A B A B ...; the table shows the median
and the min-max of each figure.

Variants: ``inproc`` publisher and consumers in one process; ``split`` consumers in a
second process (CPU and RSS are then the consumer process's); ``backlog`` publishes all N
before the consumers start (peak RSS while a backlog drains).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

from .common import SERVICES, Recorder, check_and_delete, cpu_seconds, peak_rss_mb, summarize

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
IMPLS = ("raw", "choreo")
FIGURES = (
    ("e2e_per_s", "deliveries/s", "{:,.0f}"),
    ("publish_per_s", "confirmed publishes/s", "{:,.0f}"),
    ("p50_ms", "latency p50 ms", "{:.1f}"),
    ("p99_ms", "latency p99 ms", "{:.1f}"),
    ("cpu_us_per_delivery", "client CPU us/delivery", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
)


def side(impl: str, url: str, namespace: str):  # type: ignore[no-untyped-def]
    if impl == "raw":
        from .raw_aiopika import Raw

        return Raw(url, namespace)
    from .choreo_impl import Choreo

    return Choreo(url, namespace)


async def run_inproc(impl: str, url: str, n: int, backlog: bool) -> dict[str, object]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    it = side(impl, url, namespace)
    await it.open()
    rec, done = Recorder(expected=len(SERVICES) * n), asyncio.Event()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    if backlog:
        await it.publish(n)
        t_published = time.perf_counter()
        await it.consume(rec, done)
    else:
        await it.declare()
        await it.consume(rec, done)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        await it.publish(n)
        t_published = time.perf_counter()
    await asyncio.wait_for(done.wait(), timeout=900)
    result = summarize(impl, n, rec, t0, t_published, cpu_seconds() - cpu0)
    queues, exchanges = await it.close()
    left = await check_and_delete(url, queues, exchanges)
    assert not any(left.values()), f"messages left behind: {left}"
    return result.as_dict()


async def run_consumer(impl: str, url: str, n: int, namespace: str) -> dict[str, object]:
    """The consumer process of the split variant: declare, say READY, consume N x 3."""
    it = side(impl, url, namespace)
    await it.open()
    await it.declare()
    rec, done = Recorder(expected=len(SERVICES) * n), asyncio.Event()
    await it.consume(rec, done)
    cpu0 = cpu_seconds()
    print("READY", flush=True)
    await asyncio.wait_for(done.wait(), timeout=900)
    cpu = cpu_seconds() - cpu0
    await it.close()
    latencies = sorted(rec.latencies)
    return {
        "deliveries": len(latencies),
        "last_done": time.time() - (time.perf_counter() - rec.last_done),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "cpu_us_per_delivery": cpu / len(latencies) * 1e6,
        "peak_rss_mb": peak_rss_mb(),
    }


async def run_split(impl: str, url: str, n: int) -> dict[str, object]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "bench.fanout", "--one", impl, "--consumer", namespace]
    consumer = await asyncio.create_subprocess_exec(
        *command, "--n", str(n), "--url", url, stdout=asyncio.subprocess.PIPE
    )
    assert consumer.stdout is not None
    assert (await consumer.stdout.readline()).strip() == b"READY"
    it = side(impl, url, namespace)
    await it.open()
    start = time.time()
    t0 = time.perf_counter()
    await it.publish(n)
    publish_s = time.perf_counter() - t0
    figures = json.loads((await consumer.stdout.read()).decode().strip().splitlines()[-1])
    await consumer.wait()
    queues, exchanges = await it.close()
    left = await check_and_delete(url, queues, exchanges)
    assert not any(left.values()), f"messages left behind: {left}"
    e2e = figures["deliveries"] / (figures["last_done"] - start)
    return {"impl": impl, "n": n, "e2e_per_s": e2e, "publish_per_s": n / publish_s, **figures}


def table(results: dict[str, list[dict[str, object]]]) -> str:
    def med(runs: list[dict[str, object]], key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]

    lines = [f"{'':26}" + "".join(f"{impl:>24}" for impl in results)]
    for key, label, fmt in FIGURES:
        row = f"{label:26}"
        for runs in results.values():
            values = [float(r[key]) for r in runs]  # type: ignore[arg-type]
            low, high = fmt.format(min(values)), fmt.format(max(values))
            row += f"{fmt.format(statistics.median(values)) + f' ({low}-{high})':>24}"
        lines.append(row)
    raw, ours = results["raw"], results["choreo"]
    speed = med(ours, "e2e_per_s") / med(raw, "e2e_per_s")
    cpu = med(ours, "cpu_us_per_delivery") / med(raw, "cpu_us_per_delivery")
    lines.append(f"choreo / raw: throughput x{speed:.2f}, CPU per delivery x{cpu:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variant", choices=("inproc", "split", "backlog"), default="inproc")
    parser.add_argument("--url", default=os.environ.get("CHOREO_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--json", help="write every run's figures to this file")
    parser.add_argument(
        "--queue-type", choices=("classic", "quorum"), help="queues of both sides (default classic)"
    )
    parser.add_argument("--one", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--consumer", metavar="NAMESPACE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.queue_type:  # the runs are subprocesses: they read it from the environment
        os.environ["CHOREO_BENCH_QUEUE_TYPE"] = args.queue_type
    if args.one:
        if args.consumer:
            figures = asyncio.run(run_consumer(args.one, args.url, args.n, args.consumer))
        elif args.variant == "split":
            figures = asyncio.run(run_split(args.one, args.url, args.n))
        else:
            figures = asyncio.run(run_inproc(args.one, args.url, args.n, args.variant == "backlog"))
        print(json.dumps(figures))
        return
    results: dict[str, list[dict[str, object]]] = {impl: [] for impl in IMPLS}
    for run in range(args.runs):
        for impl in IMPLS:
            command = [sys.executable, "-m", "bench.fanout", "--one", impl, "--n", str(args.n)]
            command += ["--variant", args.variant, "--url", args.url]
            out = subprocess.run(command, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                sys.exit(f"{impl} run {run + 1} failed:\n{out.stderr}")
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            results[impl].append(figures)
            print(
                f"run {run + 1} {impl:7} {figures['e2e_per_s']:>9,.0f} deliveries/s "
                f"{figures['cpu_us_per_delivery']:6.1f} us CPU/delivery "
                f"{figures['peak_rss_mb']:5.0f} MB",
                flush=True,
            )
    print(
        f"\nfan-out to 3 services ({args.variant}), N={args.n:,} events, "
        f"{args.runs} runs each, median (min-max)\n"
    )
    print(table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
