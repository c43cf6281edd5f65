"""The database store (#13): what the inbox costs a handler, and how fast the relay sends.

    python -m bench.store [--n 1000] [--runs 3] [--db postgres|sqlite] [--only inbox|relay]

Two measurements, each against its baseline in the same run, runs interleaved (every side
once per run, each a fresh subprocess with a throw-away database and namespace of its own):

inbox   N events wait in the queue of a service whose handler inserts one small row;
        ``stored``: the service has a store, the handler inserts through ``ctx.session``
        (inbox row, insert and commit in one transaction); ``plain``: no store, the handler
        inserts in a transaction of its own. Same broker, N, prefetch, concurrency and
        connection pool. Figure: handled events/s from the start of consumption to the
        last ack.
relay   N events reach a queue nobody consumes. ``direct``: ``bus.publish`` gathered in
        chunks of the store's batch size (confirmed). ``tx1`` / ``tx100``: a producer
        commits them through ``store.transaction()``, 1 or 100 events per transaction,
        while the bus's relay publishes them; figure: first commit to the last confirm
        (counted through the observer's ``relayed`` hook). ``backlog``: the N rows are
        committed first, then a relay starts: the relay alone.

After each run: the ledger and inbox hold N rows (inbox), the outbox has nothing pending
and the queue holds exactly N messages (relay); the queues, exchanges and the database
are deleted. ``--profile`` adds where a relay round spends its time (claim, publish, mark),
timed around choreo's internals (``Relay.round``, ``Bus._send``).

RabbitMQ: ``CHOREO_BENCH_URL``; PostgreSQL server: ``CHOREO_BENCH_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``), where databases ``choreo_b_<hex>``
are created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from choreo import Bus, Context, Event, Service, connect
from choreo.observability.observer import Observer, Outcome

from .common import cpu_seconds, payload

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
INBOX_SIDES = ("plain", "stored")
RELAY_SIDES = ("direct", "tx1", "tx100", "backlog")
PREFETCH, CONCURRENCY = 64, 16  # both inbox sides; the pool has room for every handler
BATCH = 500  # the store's batch_size (its default), and direct's publishes in flight
FILL = 128  # publishes in flight while filling the inbox benchmark's queue
TIMEOUT = 300.0  # seconds one side may take, at most
RUN_TIMEOUT = 600.0  # seconds one subprocess may take, database and cleanup included

LEDGER_METADATA = sa.MetaData()
LEDGER = sa.Table(
    "bench_ledger",
    LEDGER_METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("sku", sa.String(32), nullable=False),
    sa.Column("quantity", sa.Integer(), nullable=False),
)


class StockCounted(Event):
    sku: str
    quantity: int
    warehouse: str
    sent_at: float


class RelayStarted(Event):
    """Never published: handled by the service whose start starts the backlog's relay."""


class Counting(Observer):
    """Counts acked deliveries and relayed rows; ``done`` is set at ``expected``."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.handled_ok = 0
        self.not_ok: dict[str, int] = {}  # retries, duplicates...: none expected
        self.relayed_rows = 0
        self.rounds = 0
        self.finished = 0.0
        self.done = asyncio.Event()

    def handled(self, service: str, event: str | None, outcome: Outcome, *_: Any) -> None:
        if outcome is Outcome.OK:
            self.handled_ok += 1
            self._check(self.handled_ok)
        else:
            self.not_ok[outcome.value] = self.not_ok.get(outcome.value, 0) + 1

    def relayed(self, store: str, count: int) -> None:
        self.relayed_rows += count
        self.rounds += 1
        self._check(self.relayed_rows)

    def _check(self, count: int) -> None:
        if count >= self.expected and not self.done.is_set():
            self.finished = time.perf_counter()
            self.done.set()


# -- the database of one run ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def throwaway_database(db: str) -> AsyncIterator[str]:
    """A fresh database for one run (SQLAlchemy async URL), deleted afterwards."""
    if db == "sqlite":
        with tempfile.TemporaryDirectory(prefix="choreo-bench-") as directory:
            yield f"sqlite+aiosqlite:///{directory}/bench.db"
        return
    import asyncpg

    server = os.environ.get("CHOREO_BENCH_POSTGRES_URL", DEFAULT_POSTGRES)
    name = f"choreo_b_{secrets.token_hex(6)}"  # hex only: safe to put into the statement
    admin = await asyncpg.connect(server, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"', timeout=30)
    finally:
        await admin.close()
    parts = urlsplit(server)
    try:
        yield urlunsplit(("postgresql+asyncpg", parts.netloc, f"/{name}", parts.query, ""))
    finally:
        admin = await asyncpg.connect(server, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=30)
        finally:
            await admin.close()


def make_engine(url: str) -> AsyncEngine:
    # room for every handler, the relay's LISTEN connection and its rounds: nobody waits
    return create_async_engine(url, pool_size=CONCURRENCY + 4, max_overflow=0)


async def count_rows(engine: AsyncEngine, table: str, where: str = "") -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(sa.text(f"SELECT count(*) FROM {table} {where}")))


async def delete_declared(url: str, queues: list[str], exchanges: list[str]) -> dict[str, int]:
    """Delete the run's queues and exchanges; return the messages each queue still held."""
    left = {}
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for name in queues:
            deleted = await channel.queue_delete(name)
            left[name] = int(getattr(deleted, "message_count", 0) or 0)
        for name in exchanges:
            await channel.exchange_delete(name)
    finally:
        await connection.close()
    return left


@dataclass
class Run:
    """The bus of one run, and what its queues still held when they were deleted."""

    bus: Bus
    left: dict[str, int] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def bus_of_run(url: str, observer: Observer, **options: Any) -> AsyncIterator[Run]:
    """A bus in a namespace of its own; what it declared is deleted afterwards, and
    ``run.left`` tells how many messages each queue held then."""
    namespace = f"bench-store-{secrets.token_hex(4)}"
    bus = connect(
        url, namespace=namespace, connection_name="bench.store", observer=observer, **options
    )
    run = Run(await bus.open())
    queues, exchanges = [], []
    try:
        yield run
    finally:
        queues, exchanges = sorted(bus.declared_queues), sorted(bus.declared_exchanges)
        await bus.close()  # forgets what it declared
        run.left = await delete_declared(url, queues, exchanges)


async def publish_gathered(bus: Bus, n: int, chunk: int) -> None:
    for start in range(0, n, chunk):
        await asyncio.gather(
            *(
                bus.publish(StockCounted(**payload(i)))  # type: ignore[arg-type]
                for i in range(start, min(n, start + chunk))
            )
        )


# -- measurement 1: the inbox -------------------------------------------------------------------


def ledger_service(engine: AsyncEngine, store: Any) -> Service:
    service = Service("ledger", prefetch=PREFETCH, concurrency=CONCURRENCY, store=store)
    if store is not None:

        @service.on(StockCounted)
        async def stored(event: StockCounted, ctx: Context) -> None:
            await ctx.session.execute(
                sa.insert(LEDGER).values(
                    message_id=ctx.message_id, sku=event.sku, quantity=event.quantity
                )
            )

        return service
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @service.on(StockCounted)
    async def plain(event: StockCounted, ctx: Context) -> None:
        async with sessions() as session, session.begin():
            await session.execute(
                sa.insert(LEDGER).values(
                    message_id=ctx.message_id, sku=event.sku, quantity=event.quantity
                )
            )

    return service


async def run_inbox(side: str, url: str, db: str, n: int) -> dict[str, object]:
    from choreo.sql import Store

    async with throwaway_database(db) as db_url:
        engine = make_engine(db_url)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(LEDGER_METADATA.create_all)
            store = None
            if side == "stored":
                store = Store(engine, batch_size=BATCH)
                await store.create_tables()
            observer = Counting(expected=n)
            async with bus_of_run(url, observer) as run:
                service = ledger_service(engine, store)
                await run.bus.declare(service)
                await publish_gathered(run.bus, n, FILL)  # the backlog the service drains
                cpu0, t0 = cpu_seconds(), time.perf_counter()
                await run.bus.start(service)
                await asyncio.wait_for(observer.done.wait(), TIMEOUT)
                elapsed, cpu = observer.finished - t0, cpu_seconds() - cpu0
                await run.bus.stop()
            rows = await count_rows(engine, "bench_ledger")
            inbox = await count_rows(engine, "choreo_inbox") if store is not None else n
        finally:
            await engine.dispose()
    assert (rows, inbox) == (n, n), f"{side}: {rows} ledger rows, {inbox} inbox rows, not {n}"
    assert not any(run.left.values()), f"messages left behind: {run.left}"
    assert not observer.not_ok, f"{side}: deliveries not handled at once: {observer.not_ok}"
    return {
        "side": side,
        "n": n,
        "events_per_s": n / elapsed,
        "cpu_us_per_event": cpu / n * 1e6,
    }


# -- measurement 2: the relay -------------------------------------------------------------------


def sink_service() -> Service:
    """Binds a queue to the event, so that publishes are routed; never consumed."""
    sink = Service("sink")

    @sink.on(StockCounted)
    async def never(event: StockCounted) -> None:  # pragma: no cover - not consumed
        raise AssertionError("the sink is not consumed")

    return sink


async def produce(store: Any, n: int, per_transaction: int) -> None:
    for start in range(0, n, per_transaction):
        async with store.transaction() as tx:
            for i in range(start, min(n, start + per_transaction)):
                await tx.publish(StockCounted(**payload(i)))  # type: ignore[arg-type]


class Phases:
    """``--profile``: time a relay round's claim, publish and mark, around choreo's
    internals (``Relay.round``, ``Bus._send``; names of this commit, not an API)."""

    def __init__(self) -> None:
        self.claim = self.publish = self.mark = 0.0
        self.rounds = 0
        self._round_started = self._send_started = self._send_ended = 0.0

    def install(self) -> None:
        from choreo.sql import relay as relay_module

        phases, real_round, real_send = self, relay_module.Relay.round, Bus._send

        async def timed_round(relay: Any) -> Any:
            phases._round_started = phases._send_started = phases._send_ended = 0.0
            started = time.perf_counter()
            phases._round_started = started
            result = await real_round(relay)
            ended = time.perf_counter()
            if phases._send_started:  # rows were claimed and published
                phases.rounds += 1
                phases.claim += phases._send_started - started
                phases.publish += phases._send_ended - phases._send_started
                phases.mark += ended - phases._send_ended
            return result

        async def timed_send(bus: Bus, messages: list[Any]) -> Any:
            phases._send_started = time.perf_counter()
            try:
                return await real_send(bus, messages)
            finally:
                phases._send_ended = time.perf_counter()

        relay_module.Relay.round = timed_round  # type: ignore[method-assign]
        Bus._send = timed_send  # type: ignore[method-assign]

    def as_dict(self, n: int) -> dict[str, float]:
        rounds = max(self.rounds, 1)
        return {
            "claim_ms_per_round": self.claim / rounds * 1000,
            "publish_ms_per_round": self.publish / rounds * 1000,
            "mark_ms_per_round": self.mark / rounds * 1000,
            "claim_us_per_event": self.claim / n * 1e6,
            "publish_us_per_event": self.publish / n * 1e6,
            "mark_us_per_event": self.mark / n * 1e6,
        }


async def run_relay(side: str, url: str, db: str, n: int, profile: bool) -> dict[str, object]:
    from choreo.sql import Store

    phases = Phases()
    if profile and side != "direct":
        phases.install()
    observer = Counting(expected=n)
    figures: dict[str, object] = {"side": side, "n": n}
    if side == "direct":
        async with bus_of_run(url, observer) as run:
            await run.bus.declare(sink_service())
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            await publish_gathered(run.bus, n, BATCH)
            elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        figures.update(events_per_s=n / elapsed, commit_per_s=0.0, tail_ms=0.0)
        figures.update(rows_per_round=float(BATCH), cpu_us_per_event=cpu / n * 1e6)
    else:
        async with throwaway_database(db) as db_url:
            engine = make_engine(db_url)
            try:
                store = Store(engine, batch_size=BATCH)
                await store.create_tables()
                if side == "backlog":
                    starter = Service("relay-starter", store=store)

                    @starter.on(RelayStarted)
                    async def never(event: RelayStarted) -> None:  # pragma: no cover
                        raise AssertionError("nothing publishes RelayStarted")

                    t_produce = time.perf_counter()
                    await produce(store, n, 100)
                    commit_s = time.perf_counter() - t_produce
                    async with bus_of_run(url, observer) as run:
                        await run.bus.declare(sink_service(), starter)
                        cpu0, t0 = cpu_seconds(), time.perf_counter()
                        await run.bus.start(starter)  # a started service's store is relayed
                        await asyncio.wait_for(observer.done.wait(), TIMEOUT)
                        t_committed = None  # before t0: no tail to speak of
                        elapsed, cpu = observer.finished - t0, cpu_seconds() - cpu0
                else:
                    per_transaction = int(side.removeprefix("tx"))
                    async with bus_of_run(url, observer, stores=[store]) as run:
                        await run.bus.declare(sink_service())
                        cpu0, t0 = cpu_seconds(), time.perf_counter()
                        await produce(store, n, per_transaction)
                        t_committed = time.perf_counter()
                        await asyncio.wait_for(observer.done.wait(), TIMEOUT)
                        elapsed, cpu = observer.finished - t0, cpu_seconds() - cpu0
                        commit_s = t_committed - t0
                status = await store.status()
            finally:
                await engine.dispose()
        assert (status.pending, status.sent) == (0, n), f"{side}: outbox {status}"
        figures.update(events_per_s=n / elapsed, commit_per_s=n / commit_s)
        if t_committed is not None:
            figures.update(tail_ms=(observer.finished - t_committed) * 1000)
        figures.update(rows_per_round=n / max(observer.rounds, 1), cpu_us_per_event=cpu / n * 1e6)
        if profile:
            figures.update(phases.as_dict(n))
    left = run.left
    sink = [count for name, count in left.items() if name.endswith(".sink")]
    assert sink == [n], f"{side}: the sink queue held {sink}, not [{n}] ({left})"
    assert sum(left.values()) == n, f"{side}: messages left elsewhere: {left}"
    return figures


# -- the runs and the table ----------------------------------------------------------------------

INBOX_FIGURES = (
    ("events_per_s", "handled events/s", "{:,.0f}"),
    ("cpu_us_per_event", "client CPU us/event", "{:.0f}"),
)
RELAY_FIGURES = (
    ("events_per_s", "confirmed events/s", "{:,.0f}"),
    ("commit_per_s", "committed events/s", "{:,.0f}"),
    ("tail_ms", "last commit->confirm ms", "{:,.0f}"),
    ("rows_per_round", "rows per relay round", "{:.1f}"),
    ("cpu_us_per_event", "client CPU us/event", "{:.0f}"),
)
PROFILE_FIGURES = (
    ("claim_ms_per_round", "claim ms/round", "{:.1f}"),
    ("publish_ms_per_round", "publish ms/round", "{:.1f}"),
    ("mark_ms_per_round", "mark ms/round", "{:.1f}"),
    ("claim_us_per_event", "claim us/event", "{:.0f}"),
    ("publish_us_per_event", "publish us/event", "{:.0f}"),
    ("mark_us_per_event", "mark us/event", "{:.0f}"),
)


def median(runs: list[dict[str, object]], key: str) -> float:
    return statistics.median(float(run[key]) for run in runs)  # type: ignore[arg-type]


def table(
    results: dict[str, list[dict[str, object]]], figures: tuple[tuple[str, str, str], ...]
) -> list[str]:
    width = 22
    lines = [f"{'':26}" + "".join(f"{side:>{width}}" for side in results)]
    for key, label, fmt in figures:
        row = f"{label:26}"
        for side, runs in results.items():
            values = [float(run[key]) for run in runs if key in run]  # type: ignore[arg-type]
            if not values or (side == "direct" and key not in ("events_per_s", "cpu_us_per_event")):
                row += f"{'-':>{width}}"
                continue
            low, high = fmt.format(min(values)), fmt.format(max(values))
            cell = fmt.format(statistics.median(values))
            row += f"{cell + (f' ({low}-{high})' if len(values) > 1 else ''):>{width}}"
        lines.append(row)
    return lines


def one_run(side: str, args: argparse.Namespace) -> dict[str, object]:
    command = [sys.executable, "-m", "bench.store", "--one", side, "--n", str(args.n)]
    command += ["--db", args.db, "--url", args.url] + (["--profile"] if args.profile else [])
    out = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if out.returncode != 0:
        sys.exit(f"{side} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="events per run (default 1000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--only", choices=("inbox", "relay"), help="one measurement only")
    parser.add_argument("--profile", action="store_true", help="relay rounds: claim/publish/mark")
    parser.add_argument("--url", default=os.environ.get("CHOREO_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--json", help="write every run's figures to this file")
    parser.add_argument("--one", choices=INBOX_SIDES + RELAY_SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.n < 1 or args.runs < 1:
        parser.error("--n and --runs must be positive")
    if args.one:
        if args.one in INBOX_SIDES:
            figures = asyncio.run(run_inbox(args.one, args.url, args.db, args.n))
        else:
            figures = asyncio.run(run_relay(args.one, args.url, args.db, args.n, args.profile))
        print(json.dumps(figures))
        return
    sides = {"inbox": INBOX_SIDES, "relay": RELAY_SIDES}
    measured = [args.only] if args.only else ["inbox", "relay"]
    results: dict[str, list[dict[str, object]]] = {
        side: [] for what in measured for side in sides[what]
    }
    for run in range(args.runs):
        for side in results:
            figures = one_run(side, args)
            results[side].append(figures)
            print(
                f"run {run + 1} {side:8} {figures['events_per_s']:>8,.0f} events/s "
                f"{figures['cpu_us_per_event']:6.0f} us CPU/event",
                flush=True,
            )
    print(f"\nstore on {args.db}, N={args.n:,} events, {args.runs} runs each, median (min-max)")
    if "inbox" in measured:
        inbox = {side: results[side] for side in INBOX_SIDES}
        print("\ninbox: a handler inserting one row, with the store vs without\n")
        print("\n".join(table(inbox, INBOX_FIGURES)))
        ratio = median(inbox["stored"], "events_per_s") / median(inbox["plain"], "events_per_s")
        print(f"stored / plain: handled events/s x{ratio:.2f}")
    if "relay" in measured:
        relay = {side: results[side] for side in RELAY_SIDES}
        print("\nrelay: committed through store.transaction() vs bus.publish\n")
        figures_shown = RELAY_FIGURES + (PROFILE_FIGURES if args.profile else ())
        print("\n".join(table(relay, figures_shown)))
        direct = median(relay["direct"], "events_per_s")
        ratios = ", ".join(
            f"{side} x{median(relay[side], 'events_per_s') / direct:.2f}"
            for side in RELAY_SIDES[1:]
        )
        print(f"relay / direct (confirmed events/s): {ratios}  (aim: >= x0.5)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
