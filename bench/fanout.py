"""Fan-out to three services: choreo against hand-written aio-pika, interleaved.

    python -m bench.fanout [--n 20000] [--runs 3] [--url amqp://...] [--json FILE]

Each run is a fresh subprocess (clean CPU and RSS figures) that publishes N confirmed,
persistent events to one fanout exchange consumed by three durable queues, and ends when
the 3N deliveries were validated and acked; it then checks that no message was left
behind and deletes its queues. The runs alternate A B A B ..., and the table shows the
median (and min-max) of each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import uuid

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


def one(impl: str, url: str, n: int) -> dict[str, object]:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    if impl == "raw":
        from .raw_aiopika import run
    else:
        from .choreo_impl import run
    return run and asyncio.run(run(url, n, namespace)).as_dict()


def table(results: dict[str, list[dict[str, object]]]) -> str:
    lines = [f"{'':26}" + "".join(f"{impl:>24}" for impl in results)]
    for key, label, fmt in FIGURES:
        row = f"{label:26}"
        for runs in results.values():
            values = [float(r[key]) for r in runs]  # type: ignore[arg-type]
            cell = f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"
            row += f"{cell:>24}"
        lines.append(row)
    raw, ours = results.get("raw"), results.get("choreo")
    if raw and ours:

        def med(runs: list[dict[str, object]], key: str) -> float:
            return statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]

        lines.append(
            f"choreo / raw: throughput x{med(ours, 'e2e_per_s') / med(raw, 'e2e_per_s'):.2f}, "
            f"CPU per delivery x{med(ours, 'cpu_us_per_delivery') / med(raw, 'cpu_us_per_delivery'):.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", default=os.environ.get("CHOREO_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--json", help="write every run's figures to this file")
    parser.add_argument("--one", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.url, args.n)))
        return
    results: dict[str, list[dict[str, object]]] = {impl: [] for impl in IMPLS}
    for run in range(args.runs):
        for impl in IMPLS:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.fanout",
                    "--one",
                    impl,
                    "--n",
                    str(args.n),
                    "--url",
                    args.url,
                ],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if out.returncode != 0:
                sys.exit(f"{impl} run {run + 1} failed:\n{out.stderr}")
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            results[impl].append(figures)
            print(
                f"run {run + 1} {impl:7} {figures['e2e_per_s']:>9,.0f} deliveries/s  "
                f"{figures['cpu_us_per_delivery']:6.1f} us CPU/delivery",
                flush=True,
            )
    print(
        f"\nfan-out to 3 services, N={args.n:,} events, {args.runs} runs each, median (min-max)\n"
    )
    print(table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
