"""``python -m services.demo``: the whole SKU choreography, then the checkout, in one
process.

Runs inventory, catalog, wishlist, orders, the checkout saga and payments on one bus
(``memory://`` unless ``--broker`` says otherwise), feeds the warehouse sample, prints one
line per handled event as the choreography unfolds and waits until every event was
handled. Then it places three orders (one paid, one declined, one that nobody pays in
time: ``CHOREO_DEMO_CHECKOUT_TIMEOUT`` seconds, 2 by default here), follows them to their
ends, and prints what each service's own database holds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from choreo import connect

from . import catalog, checkout, inventory, orders, payments, wishlist
from .events import OrderPlaced
from .storage import DemoStore, location
from .warehouse import SAMPLE, feed, read_csv

MODULES = (inventory, catalog, wishlist, orders, checkout, payments)  # a store each
SERVICES = (
    inventory.service,
    inventory.reserving,
    catalog.service,
    wishlist.service,
    orders.service,
    checkout.service,
    payments.service,
)
DEMO_TIMEOUT = "2"  # seconds to pay, unless CHOREO_DEMO_CHECKOUT_TIMEOUT says otherwise
ORDERS = (  # paid and confirmed; declined (over 1000 EUR); held for review: times out
    OrderPlaced(order_id="o-1", sku="SKU-1", quantity=2, amount=120),
    OrderPlaced(order_id="o-2", sku="SKU-4", quantity=3, amount=1450),
    OrderPlaced(order_id="o-3", sku="SKU-2", quantity=1, amount=640),
)
# what the services log for them: per order, the saga's start, inventory's reservation and
# the sku_processed it sends (inventory, catalog, wishlist), the saga's charge, payments,
# then the saga's end and orders' (9); a compensation adds inventory's release and its
# sku_processed (4)
CHECKOUT_HANDLED = 9 + 13 + 13


class Choreography(logging.Handler):
    """Prints the services' log lines as a trace, and counts the events they handled."""

    def __init__(self) -> None:
        super().__init__()
        self.handled = 0
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        service = getattr(record, "service", None)
        if service is None:
            return
        self.handled += 1
        correlation = str(getattr(record, "correlation_id", ""))[:8]
        try:
            print(
                f"  {service:<10} {record.event:<17} {record.sku:<6} {correlation:<8}  "  # type: ignore[attr-defined]
                f"{record.getMessage().removeprefix(f'{record.sku} ')}",  # type: ignore[attr-defined]
                flush=True,
            )
        except BrokenPipeError:  # the reader is gone (make demo | head): the story goes on
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        self.changed.set()

    async def wait_for(self, count: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.handled < count:
                self.changed.clear()
                await self.changed.wait()


def table(title: str, header: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows, strict=False)]
    print(f"\n{title}")
    for row in (header, *rows):
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


async def rows(store: DemoStore, query: sa.Select[Any]) -> list[tuple[object, ...]]:
    async with store.transaction() as tx:
        return [tuple(row) for row in await tx.session.execute(query)]


async def print_state() -> None:
    for_sale = inventory.for_sale
    table(
        "inventory: available for sale",
        ("sku", "available", "version"),
        await rows(
            inventory.store,
            sa.select(for_sale.c.sku, for_sale.c.available, for_sale.c.version).order_by(
                for_sale.c.sku
            ),
        ),
    )
    products = catalog.products
    table(
        "catalog: products",
        ("sku", "name", "available"),
        [
            (sku, name, "yes" if available else "no")
            for sku, name, available in await rows(
                catalog.store,
                sa.select(products.c.sku, products.c.name, products.c.available).order_by(
                    products.c.sku
                ),
            )
        ],
    )
    sent = wishlist.notifications
    table(
        "wishlist: notifications sent",
        ("user", "email", "sku"),
        await rows(
            wishlist.store,
            sa.select(sent.c.user, sent.c.email, sent.c.sku).order_by(sent.c.sku, sent.c.user),
        ),
    )


async def print_checkout() -> None:
    table(
        "inventory: reservations",
        ("sku", "reserved"),
        await rows(
            inventory.store,
            sa.select(inventory.reservations).order_by(inventory.reservations.c.sku),
        ),
    )
    holds = inventory.order_holds
    table(
        "inventory: held per order",
        ("order", "sku", "quantity", "status"),
        await rows(
            inventory.store,
            sa.select(holds.c.order_id, holds.c.sku, holds.c.quantity, holds.c.status).order_by(
                holds.c.order_id
            ),
        ),
    )
    placed = orders.orders
    table(
        "orders",
        ("order", "sku", "quantity", "amount", "status", "why"),
        [
            (*row[:-1], row[-1] or "")
            for row in await rows(
                orders.store,
                sa.select(
                    placed.c.order_id,
                    placed.c.sku,
                    placed.c.quantity,
                    placed.c.amount,
                    placed.c.status,
                    placed.c.reason,
                ).order_by(placed.c.order_id),
            )
        ],
    )


async def main(broker: str, csv_file: Path, fresh: bool = False) -> None:
    try:
        await story(broker, csv_file, fresh)
    finally:
        for module in MODULES:
            await module.store.engine.dispose()


async def story(broker: str, csv_file: Path, fresh: bool) -> None:
    reports = read_csv(csv_file)
    for module in MODULES:  # one after the other: CREATE DATABASE does not like company
        if fresh:
            await module.store.drop()
        await module.store.prepare()
    trace = Choreography()
    services_log = logging.getLogger("services")
    services_log.addHandler(trace)
    services_log.setLevel(logging.INFO)
    services_log.propagate = False
    # inventory handles sku_received and sku_processed; catalog and wishlist sku_processed
    expected = 4 * len(reports)
    started = time.perf_counter()
    async with connect(broker) as bus:
        await bus.start(*SERVICES)
        print(f"choreo demo on {bus.redacted_url}: feeding {len(reports)} rows of {csv_file}\n")
        print(f"  {'service':<10} {'event':<17} {'sku':<6} {'corr.':<8}  what happened")
        await feed(bus, reports)
        await trace.wait_for(expected, timeout=60)
        elapsed = time.perf_counter() - started
        print(f"\n{trace.handled} events handled in {elapsed:.2f}s; data in {location()}")
        await place_orders(trace)
    await print_state()
    await print_checkout()


async def place_orders(trace: Choreography) -> None:
    """The checkout: three orders through orders' store (what POST /orders does), followed
    until each one ended and the availability of their SKUs was seen everywhere."""
    print(
        f"\ncheckout: {len(ORDERS)} orders, {checkout.timeout():g}s to pay each "
        f"(payments declines over {payments.DECLINE_ABOVE} EUR, reviews over "
        f"{payments.REVIEW_ABOVE} EUR)"
    )
    for order in ORDERS:
        print(f"  {order.order_id}: {order.quantity} x {order.sku} for {order.amount} EUR")
    print(f"\n  {'service':<10} {'event':<17} {'sku':<6} {'corr.':<8}  what happened")
    started, before = time.perf_counter(), trace.handled
    for order in ORDERS:
        async with orders.store.transaction() as tx:
            await orders.place(tx, order)
    await trace.wait_for(before + CHECKOUT_HANDLED, timeout=60)
    elapsed = time.perf_counter() - started
    print(f"\n{trace.handled - before} events handled in {elapsed:.2f}s")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.demo", description=__doc__)
    parser.add_argument("--broker", default="memory://", help="broker URL (default memory://)")
    parser.add_argument("--csv", type=Path, default=SAMPLE, help="warehouse feed to replay")
    parser.add_argument(
        "--fresh", action="store_true", help="start from empty databases (seeded again)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault(checkout.TIMEOUT_VARIABLE, DEMO_TIMEOUT)
    try:
        asyncio.run(main(args.broker, args.csv, args.fresh))
    except TimeoutError:
        print("demo: the choreography did not settle within 60 s", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # one clear line, as choreo's own CLI does
        print(f"demo: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
