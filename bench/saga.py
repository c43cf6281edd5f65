"""Sagas (#15): what keeping a saga's state costs a stored handler, on PostgreSQL.

    python -m bench.saga [--n 1000] [--runs 3] [--db postgres|sqlite]

Two sides, each against the other in the same run, interleaved (stored saga, stored saga,
...; every side of every run a fresh subprocess with a throw-away database and namespace):

stored  a ``Service`` with a store: ``Opened`` and ``Advanced`` handlers that each stage one
        ``Noted`` event through ``ctx.publish`` (inbox row, outbox row, one transaction);
saga    a ``Saga`` (key ``order_id``) whose ``starts(Opened)`` and ``on(Advanced)`` handlers
        do the same, and besides: the instance is inserted (start) or read ``FOR UPDATE``
        (step), written back with its version, and a history row added, in that transaction.

N ``Opened`` events (N keys) and then N ``Advanced`` events (the same keys, in the same
order) wait in the service's queue before it starts (prefetch 64, concurrency 16, a pool
with room for every handler). Figures: handled events/s over all 2N, and for each phase:
``start`` from the start of consumption to the N-th ack, ``step`` from there to the 2N-th
(the Advanced of key k is N messages behind its Opened, so its instance exists by then).

After each run: every delivery was handled at its first attempt, the inbox holds 2N rows,
the saga N instances at version 2 with 2N history rows, the outbox nothing pending, the
sink queue 2N ``Noted``; then the queues, exchanges and database are deleted. Each side
waits at most 300 s; the defaults take about a minute on an idle 2-core machine.

RabbitMQ: ``CHOREO_BENCH_URL``; PostgreSQL server: ``CHOREO_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``), where databases ``choreo_b_<hex>``
are created and dropped (``bench.store``'s helpers).
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
from typing import Any

from pydantic import BaseModel

from choreo import Context, Event, Saga, SagaContext, Service
from choreo.observability.observer import Observer, Outcome

from .common import cpu_seconds
from .store import (
    BATCH,
    CONCURRENCY,
    DEFAULT_URL,
    FILL,
    PREFETCH,
    RUN_TIMEOUT,
    TIMEOUT,
    bus_of_run,
    count_rows,
    make_engine,
    throwaway_database,
)

SIDES = ("stored", "saga")


class Opened(Event, name="bench_saga.opened"):
    order_id: str
    sku: str
    quantity: int


class Advanced(Event, name="bench_saga.advanced"):
    order_id: str
    step: int


class Noted(Event, name="bench_saga.noted"):
    order_id: str
    step: int


class Order(BaseModel):
    order_id: str
    sku: str
    quantity: int
    step: int = 0


class Phases(Observer):
    """Counts acked deliveries; the times of the N-th and the 2N-th; relayed rows."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.handled_ok = 0
        self.not_ok: dict[str, int] = {}  # retries, duplicates...: none expected
        self.relayed_rows = 0
        self.first_half = self.finished = 0.0
        self.done = asyncio.Event()
        self.sent = asyncio.Event()

    def handled(self, service: str, event: str | None, outcome: Outcome, *_: Any) -> None:
        if outcome is not Outcome.OK:
            self.not_ok[outcome.value] = self.not_ok.get(outcome.value, 0) + 1
            return
        self.handled_ok += 1
        if self.handled_ok == self.n:
            self.first_half = time.perf_counter()
        if self.handled_ok == 2 * self.n:
            self.finished = time.perf_counter()
            self.done.set()

    def relayed(self, store: str, count: int) -> None:
        self.relayed_rows += count
        if self.relayed_rows >= 2 * self.n:
            self.sent.set()


def service_of(side: str, store: Any) -> Service:
    """The service of ``side``: the same handler work, with or without a saga around it."""
    options: dict[str, Any] = {"prefetch": PREFETCH, "concurrency": CONCURRENCY, "store": store}
    if side == "stored":
        service = Service("orders", emits=[Noted], **options)

        @service.on(Opened)
        async def opened(event: Opened, ctx: Context) -> None:
            await ctx.publish(Noted(order_id=event.order_id, step=0))

        @service.on(Advanced)
        async def advanced(event: Advanced, ctx: Context) -> None:
            await ctx.publish(Noted(order_id=event.order_id, step=event.step))

        return service
    saga = Saga("orders", state=Order, key="order_id", emits=[Noted], **options)

    @saga.starts(Opened)
    async def started(event: Opened, s: SagaContext[Order]) -> None:
        await s.publish(Noted(order_id=event.order_id, step=0))

    @saga.on(Advanced)
    async def stepped(event: Advanced, s: SagaContext[Order]) -> None:
        s.state.step = event.step
        await s.publish(Noted(order_id=event.order_id, step=event.step))

    return saga


def sink_service() -> Service:
    """Binds a queue to Noted, so that what the handlers stage is routed; never consumed."""
    sink = Service("sink")

    @sink.on(Noted)
    async def never(event: Noted) -> None:  # pragma: no cover - not consumed
        raise AssertionError("the sink is not consumed")

    return sink


async def fill(bus: Any, n: int) -> None:
    """N Opened, then N Advanced of the same keys, in that order, FILL publishes in flight."""
    events: list[Event] = [
        Opened(order_id=f"order-{i:06d}", sku=f"SKU-{i % 100:03d}", quantity=1 + i % 5)
        for i in range(n)
    ]
    events += [Advanced(order_id=f"order-{i:06d}", step=1) for i in range(n)]
    for start in range(0, len(events), FILL):
        await asyncio.gather(*(bus.publish(event) for event in events[start : start + FILL]))


async def run_side(side: str, url: str, db: str, n: int) -> dict[str, object]:
    from choreo.sql import Store

    async with throwaway_database(db) as db_url:
        engine = make_engine(db_url)
        try:
            store = Store(engine, batch_size=BATCH)
            await store.create_tables()
            observer = Phases(n)
            async with bus_of_run(url, observer) as run:
                service = service_of(side, store)
                await run.bus.declare(service, sink_service())
                await fill(run.bus, n)  # the backlog the service drains
                cpu0, t0 = cpu_seconds(), time.perf_counter()
                await run.bus.start(service)
                await asyncio.wait_for(observer.done.wait(), TIMEOUT)
                cpu = cpu_seconds() - cpu0
                await asyncio.wait_for(observer.sent.wait(), TIMEOUT)  # not measured
                await run.bus.stop()
            inbox = await count_rows(engine, "choreo_inbox")
            instances = await count_rows(engine, "choreo_saga", "WHERE version = 2")
            history = await count_rows(engine, "choreo_saga_history")
            status = await store.status()
        finally:
            await engine.dispose()
    assert not observer.not_ok, f"{side}: deliveries not handled at once: {observer.not_ok}"
    assert inbox == 2 * n, f"{side}: {inbox} inbox rows, not {2 * n}"
    if side == "saga":
        assert (instances, history) == (n, 2 * n), f"saga: {instances} instances, {history} steps"
    assert status.pending == 0, f"{side}: outbox {status}"
    sink = [count for name, count in run.left.items() if name.endswith(".sink")]
    assert sink == [2 * n], f"{side}: the sink queue held {sink}, not [{2 * n}] ({run.left})"
    assert sum(run.left.values()) == 2 * n, f"{side}: messages left elsewhere: {run.left}"
    return {
        "side": side,
        "n": n,
        "events_per_s": 2 * n / (observer.finished - t0),
        "start_per_s": n / (observer.first_half - t0),
        "step_per_s": n / (observer.finished - observer.first_half),
        "cpu_us_per_event": cpu / (2 * n) * 1e6,
    }


# -- the runs and the table ----------------------------------------------------------------------

FIGURES = (
    ("events_per_s", "handled events/s", "{:,.0f}"),
    ("start_per_s", "  start (Opened)/s", "{:,.0f}"),
    ("step_per_s", "  step (Advanced)/s", "{:,.0f}"),
    ("cpu_us_per_event", "client CPU us/event", "{:.0f}"),
)


def median(runs: list[dict[str, object]], key: str) -> float:
    return statistics.median(float(run[key]) for run in runs)  # type: ignore[arg-type]


def table(results: dict[str, list[dict[str, object]]]) -> list[str]:
    width = 22
    lines = [f"{'':24}" + "".join(f"{side:>{width}}" for side in results)]
    for key, label, fmt in FIGURES:
        row = f"{label:24}"
        for runs in results.values():
            values = [float(run[key]) for run in runs]  # type: ignore[arg-type]
            cell = fmt.format(statistics.median(values))
            if len(values) > 1:
                cell += f" ({fmt.format(min(values))}-{fmt.format(max(values))})"
            row += f"{cell:>{width}}"
        lines.append(row)
    return lines


def one_run(side: str, args: argparse.Namespace) -> dict[str, object]:
    command = [sys.executable, "-m", "bench.saga", "--one", side, "--n", str(args.n)]
    command += ["--db", args.db, "--url", args.url]
    out = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if out.returncode != 0:
        sys.exit(f"{side} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="instances per run (default 1000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--url", default=os.environ.get("CHOREO_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--json", help="write every run's figures to this file")
    parser.add_argument("--one", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.n < PREFETCH or args.runs < 1:
        parser.error(f"--n must be at least {PREFETCH} (the prefetch), --runs positive")
    if args.one:
        print(json.dumps(asyncio.run(run_side(args.one, args.url, args.db, args.n))))
        return
    results: dict[str, list[dict[str, object]]] = {side: [] for side in SIDES}
    began = time.perf_counter()
    for run in range(args.runs):
        for side in SIDES:
            figures = one_run(side, args)
            results[side].append(figures)
            print(
                f"run {run + 1} {side:7} {figures['events_per_s']:>7,.0f} events/s "
                f"(start {figures['start_per_s']:>6,.0f}/s, step {figures['step_per_s']:>6,.0f}/s)"
                f" {figures['cpu_us_per_event']:5.0f} us CPU/event",
                flush=True,
            )
    print(
        f"\nsaga vs stored service on {args.db}, N={args.n:,} instances (2N events) per run, "
        f"{args.runs} runs each, median (min-max), {time.perf_counter() - began:.0f}s in all\n"
    )
    print("\n".join(table(results)))
    ratio = median(results["saga"], "events_per_s") / median(results["stored"], "events_per_s")
    cpu = median(results["saga"], "cpu_us_per_event") / median(
        results["stored"], "cpu_us_per_event"
    )
    print(f"saga / stored: handled events/s x{ratio:.2f}, client CPU per event x{cpu:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
