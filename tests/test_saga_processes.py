"""A saga (#15) with real processes, a real RabbitMQ and a real PostgreSQL: concurrent
checkouts while the saga's worker is killed with SIGKILL twice.

The services are in tests/fixtures/checkout_chain.py: the ``checkout`` saga, ``inventory``
and ``payments``, each a ``choreo run`` with a database of its own. This test publishes the
orders (``bus.publish``, in concurrent batches) and counts the compensations (ReleaseStock)
at a plain consumer of its own, by message id: each must arrive exactly once, the
deduplication of redeliveries being the inboxes' work, not the counter's.

``CHOREO_TEST_CHECKOUTS`` sets the number of orders: the issue's 500 by default (about
20 s on a 2-core machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from choreo import Bus, Context, Service
from choreo.sql import Store
from choreo.sql.tables import SAGA

from . import test_store_processes as store_processes
from .conftest import Buses
from .fixtures import checkout_chain as shop
from .support import postgres
from .test_store_processes import WAIT, Processes, kill, queue_sizes, stop, until

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

# the fixtures of the outbox and inbox process tests: RabbitMQ, the subprocesses
transport = store_processes.transport
processes = store_processes.processes

CHECKOUTS = int(os.environ.get("CHOREO_TEST_CHECKOUTS", "500"))
BATCH = 25  # orders published concurrently (gathered) at a time
PAUSE = 0.25  # seconds between batches: the orders keep coming while the saga dies
LEASE = 3.0  # seconds: outbox rows a killed worker's relay had claimed wait this long
SERVICES = ("checkout", "inventory", "payments")


@contextlib.asynccontextmanager
async def prepared(url: str) -> AsyncIterator[tuple[AsyncEngine, Store]]:
    """An engine on ``url`` with choreo's tables and the fixture's tables."""
    engine = create_async_engine(url, pool_size=2, max_overflow=2)
    try:
        store = Store(engine)
        await store.create_tables()
        async with engine.begin() as connection:
            await connection.run_sync(shop.TABLES.create_all)
        yield engine, store
    finally:
        await engine.dispose()


async def rows(engine: AsyncEngine, query: Any) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(query)).all())


async def completed(engine: AsyncEngine) -> int:
    query = sa.select(sa.func.count()).where(
        SAGA.c.saga == "checkout", SAGA.c.status == "completed"
    )
    return int((await rows(engine, query))[0][0])


def release_counter() -> tuple[Service, Counter[str], dict[str, set[str]]]:
    """A plain (storeless) consumer of ReleaseStock: deliveries per message id, and the
    message ids of each order (the dedupe of an inbox: one id delivered twice is one
    compensation, published again by a relay that died before marking it sent)."""
    deliveries: Counter[str] = Counter()
    ids_of: dict[str, set[str]] = {}
    service = Service("release_counter")

    @service.on(shop.ReleaseStock)
    async def seen(event: shop.ReleaseStock, ctx: Context) -> None:
        deliveries[ctx.message_id or ""] += 1
        ids_of.setdefault(event.order_id, set()).add(ctx.message_id or "")

    return service, deliveries, ids_of


def quarantines(bus: Bus) -> set[str]:
    return {f"{bus.namespace}.{name}.suspect" for name in SERVICES}


async def test_concurrent_checkouts_survive_two_kills_of_the_saga(
    make_bus: Buses, processes: Processes, pg_database: str, postgres_url: str
) -> None:
    """CHECKOUTS orders (30 % declined by payments), published in concurrent batches of 25;
    the saga's worker is killed with SIGKILL at 15 % and at 50 % of the orders completed,
    and restarted each time. In the end every order is confirmed or cancelled as payments
    decided; each cancelled order's ReleaseStock reached the plain counter exactly once
    (one message id, one delivery) and was applied by inventory exactly once; every order
    reserved once and was charged once; inventory's reserved stock is what the confirmed
    orders hold (the cancelled ones gave theirs back); outboxes sent, queues empty."""
    n = CHECKOUTS
    began = time.monotonic()
    bus = await make_bus()
    await bus.declare(shop.checkout, shop.inventory, shop.payments)  # before anything publishes
    make_bus.extra_queues |= quarantines(bus)
    counter, deliveries, ids_of = release_counter()
    await bus.start(counter)
    processes.env[shop.LEASE_ENV] = str(LEASE)
    async with contextlib.AsyncExitStack() as stack:
        urls = {"checkout": pg_database}
        for name in ("inventory", "payments"):
            urls[name] = await stack.enter_async_context(postgres.throwaway_database(postgres_url))
        dbs = {name: await stack.enter_async_context(prepared(url)) for name, url in urls.items()}
        saga_db, inventory_db = dbs["checkout"][0], dbs["inventory"][0]
        async with inventory_db.begin() as connection:
            initial = [{"sku": sku, "reserved": shop.INITIAL_RESERVED} for sku in shop.SKUS]
            await connection.execute(sa.insert(shop.STOCK), initial)

        def start(name: str) -> Any:
            args = ["-m", "choreo", "run", f"tests.fixtures.checkout_chain:{name}"]
            args += ["--concurrency", "8", "--log-level", "INFO"]
            return processes.start(name, args, **{shop.DB_ENV: urls[name]})

        async def consuming(name: str) -> None:
            says = processes.says(name, f"service {name} consuming")
            await until(says, WAIT, f"{name} consumes")

        workers = {name: start(name) for name in SERVICES}
        for name in SERVICES:
            await consuming(name)

        published = 0

        async def place_orders() -> None:
            nonlocal published
            for first in range(0, n, BATCH):
                await asyncio.gather(
                    *(
                        bus.publish(
                            shop.OrderPlaced(
                                order_id=shop.order_id(i),
                                n=i,
                                sku=shop.sku_of(i),
                                quantity=shop.quantity_of(i),
                            )
                        )
                        for i in range(first, min(n, first + BATCH))
                    )
                )
                published = min(n, first + BATCH)
                await asyncio.sleep(PAUSE)

        timeline: list[str] = []

        async def kills() -> None:
            for share in (0.15, 0.5):

                async def past(share: float = share) -> bool:
                    return await completed(saga_db) >= share * n

                await until(past, WAIT * 2, f"{share:.0%} of the orders completed", every=0.05)
                done = await completed(saga_db)
                timeline.append(
                    f"{time.monotonic() - began:5.1f}s kill -9 checkout "
                    f"(published {published}, completed {done})"
                )
                assert done < n, f"the kill came after the run: {timeline}"
                await kill(workers["checkout"])
                workers["checkout"] = start("checkout")
                await consuming("checkout")

        async with asyncio.timeout(4 * WAIT + n / 5):
            await asyncio.gather(place_orders(), kills())

        queues = set(bus.declared_queues) | quarantines(bus)

        async def settled() -> bool:
            if await completed(saga_db) < n:
                return False
            for _, store in dbs.values():
                if (await store.status()).pending:
                    return False
            if len(deliveries) < sum(shop.declined(i) for i in range(n)):
                return False
            return not any((await queue_sizes(bus, queues)).values())

        try:
            await until(settled, 3 * WAIT + n / 10, "every checkout completed", every=0.5)
        except AssertionError:
            pending = {name: (await store.status()).pending for name, (_, store) in dbs.items()}
            raise AssertionError(
                f"not done: completed {await completed(saga_db)} of {n}, pending {pending}, "
                f"releases counted {len(deliveries)}, "
                f"queues {await queue_sizes(bus, queues)}, timeline {timeline}"
            ) from None
        finished = time.monotonic() - began
        await asyncio.sleep(2.0)  # a late second handling or publish would show meanwhile

        cancelled = {shop.order_id(i) for i in range(n) if shop.declined(i)}
        confirmed = {shop.order_id(i) for i in range(n)} - cancelled

        # every order ends confirmed or cancelled, as payments decided
        instances = await rows(saga_db, sa.select(SAGA.c.key, SAGA.c.status, SAGA.c.state))
        assert len(instances) == n
        assert {row.status for row in instances} == {"completed"}
        outcome = {row.key: row.state["status"] for row in instances}
        assert {key for key, status in outcome.items() if status == "cancelled"} == cancelled
        assert {key for key, status in outcome.items() if status == "confirmed"} == confirmed

        # each compensation published exactly once: after the dedupe by message id, one
        # ReleaseStock per cancelled order, none for a confirmed one
        assert set(ids_of) == cancelled
        twice = {order: ids for order, ids in ids_of.items() if len(ids) > 1}
        assert not twice, f"compensations published more than once: {twice}"
        assert len(deliveries) == len(cancelled)
        redelivered = sum(deliveries.values()) - len(deliveries)

        # inventory applied each reservation and each release exactly once
        moves = await rows(
            inventory_db,
            sa.select(
                shop.STOCK_MOVES.c.order_id, shop.STOCK_MOVES.c.kind, shop.STOCK_MOVES.c.message_id
            ),
        )
        reserves = Counter(m.order_id for m in moves if m.kind == "reserve")
        releases = Counter(m.order_id for m in moves if m.kind == "release")
        assert set(reserves) == confirmed | cancelled
        assert set(reserves.values()) == {1}
        assert set(releases) == cancelled
        assert set(releases.values()) == {1}
        assert {m.message_id for m in moves if m.kind == "release"} == set(deliveries)

        # the reserved stock: what the confirmed orders hold, the cancelled gave theirs back
        stock = dict(await rows(inventory_db, sa.select(shop.STOCK.c.sku, shop.STOCK.c.reserved)))
        held = Counter[str]()
        for i in range(n):
            if not shop.declined(i):
                held[shop.sku_of(i)] += shop.quantity_of(i)
        assert stock == {sku: shop.INITIAL_RESERVED + held[sku] for sku in shop.SKUS}

        # payments charged every order once
        charges = await rows(dbs["payments"][0], sa.select(shop.CHARGES.c.order_id))
        assert Counter(c.order_id for c in charges) == Counter(
            dict.fromkeys(cancelled | confirmed, 1)
        )

        for name, (_, store) in dbs.items():
            status = await store.status()
            assert (status.pending, status.failing) == (0, 0), (name, status)
        sizes = await queue_sizes(bus, queues)
        assert not any(sizes.values()), sizes
        assert all(process.poll() is None for process in workers.values())
        for name, process in workers.items():
            assert await stop(process) == 0, processes.log(name)
    duplicates = {name: processes.log(name).count(": duplicate in") for name in SERVICES}
    print(f"\n{n} checkouts ({len(cancelled)} cancelled): all done at {finished:.1f}s; "
          f"duplicates recognised by the inboxes {duplicates}; ReleaseStock delivered "
          f"again to the plain counter (same id) {redelivered} times")  # fmt: skip
    print("\n".join(timeline))
