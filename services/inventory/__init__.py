"""inventory: records stock reported by warehouses and knows what can be sold.

* ``sku_received``: store the warehouse's number and stage ``sku_processed``: both commit
  in one transaction of inventory's store (with the inbox row of the report), and the
  relay publishes ``sku_processed`` once committed.
* ``sku_processed``: recalculate the number available for sale (stock minus
  reservations), the work that did not need to happen while the warehouse waited.
* ``GetAvailability``: answer catalog and wishlist with the current figure.

``POST /skus`` (``http.py``) records stock over HTTP the same way, outside a handler.

The checkout (``reserving``, a second service on inventory's store and database, with a
queue of its own; run it beside ``service``, e.g. ``choreo run services.inventory:service
services.inventory:reserving``):

* ``reserve_stock``: hold units for an order when enough are available (``stock_reserved``),
  else ``stock_unavailable``; ``release_stock`` gives them back (the checkout's
  compensation). Either changes ``reservations``, so the SKU's version grows and
  ``sku_processed`` goes out again: the availability catalog and wishlist see follows the
  reservations. ``order_holds`` keeps what each order holds, so a repeated command changes
  nothing and a reservation that arrives after its release is refused.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from choreo import Context, Service

from ..events import (
    Availability,
    GetAvailability,
    ReleaseStock,
    ReserveStock,
    SkuProcessed,
    SkuReceived,
    StockReserved,
    StockUnavailable,
)
from ..storage import DemoStore, Seed, insert

log = logging.getLogger("services.inventory")

metadata = sa.MetaData()
stock = sa.Table(
    "stock",
    metadata,
    sa.Column("sku", sa.String, primary_key=True),
    sa.Column("warehouse", sa.String, primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
)
versions = sa.Table(  # grows with every stock change of a SKU: Availability.version
    "versions",
    metadata,
    sa.Column("sku", sa.String, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)
reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("sku", sa.String, primary_key=True),
    sa.Column("quantity", sa.Integer, nullable=False),
)
for_sale = sa.Table(
    "availability",
    metadata,
    sa.Column("sku", sa.String, primary_key=True),
    sa.Column("available", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
)
order_holds = sa.Table(  # what each order holds: status reserved, released or refused
    "order_holds",
    metadata,
    sa.Column("order_id", sa.String, primary_key=True),
    sa.Column("sku", sa.String, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("status", sa.String, nullable=False),
)
SEED: Seed = {reservations: [{"sku": "SKU-3", "quantity": 2}, {"sku": "SKU-5", "quantity": 1}]}


def open_store() -> DemoStore:
    """inventory's store, where ``CHOREO_DEMO_DB``/``CHOREO_DEMO_DATA`` say now."""
    return DemoStore("inventory", metadata, SEED)


store = open_store()
service = Service("inventory", store=store, concurrency=store.concurrency)
reserving = Service("inventory-reserving", store=store, concurrency=store.concurrency)


async def record(session: AsyncSession, report: SkuReceived) -> bool:
    """Store the number a warehouse reported; True if it changed, and then the SKU's
    version grows. A repeated report changes nothing."""
    upsert = insert(session, stock).values(
        sku=report.sku, warehouse=report.warehouse, quantity=report.quantity
    )
    changed = await session.execute(
        upsert.on_conflict_do_update(
            index_elements=[stock.c.sku, stock.c.warehouse],
            set_={"quantity": upsert.excluded.quantity},
            where=stock.c.quantity != upsert.excluded.quantity,
        )
    )
    if changed.rowcount == 0:  # type: ignore[attr-defined]
        return False
    await bump(session, report.sku)
    return True


async def bump(session: AsyncSession, sku: str) -> None:
    """The SKU's version grows (its row stays locked until commit on PostgreSQL: changes
    of one SKU take turns from here)."""
    upsert = insert(session, versions).values(sku=sku, version=1)
    await session.execute(
        upsert.on_conflict_do_update(
            index_elements=[versions.c.sku], set_={"version": versions.c.version + 1}
        )
    )


async def hold(session: AsyncSession, sku: str, quantity: int) -> None:
    """Add ``quantity`` (negative: give back) to the SKU's reservations."""
    upsert = insert(session, reservations).values(sku=sku, quantity=max(quantity, 0))
    await session.execute(
        upsert.on_conflict_do_update(
            index_elements=[reservations.c.sku],
            set_={"quantity": reservations.c.quantity + quantity},
        )
    )


async def available(session: AsyncSession, sku: str) -> Availability:
    """Stock over all warehouses minus reservations, never below zero, with its version
    (read in one statement: one snapshot, also on PostgreSQL)."""
    stocked = sa.select(sa.func.coalesce(sa.func.sum(stock.c.quantity), 0))
    reserved = sa.select(reservations.c.quantity).where(reservations.c.sku == sku)
    version = sa.select(versions.c.version).where(versions.c.sku == sku)
    units, held, seen = (
        await session.execute(
            sa.select(
                stocked.where(stock.c.sku == sku).scalar_subquery(),
                reserved.scalar_subquery(),
                version.scalar_subquery(),
            )
        )
    ).one()
    return Availability(sku=sku, available=max(0, units - (held or 0)), version=seen or 0)


def note(ctx: Context, sku: str, what: str) -> None:
    log.info(
        f"{sku} {what}",  # the SKU in the line: one SKU can be followed across the services
        extra={
            "service": "inventory",  # inventory-reserving too: one service, two queues
            "event": ctx.event_name,
            "sku": sku,
            "correlation_id": ctx.correlation_id or ctx.message_id,
        },
    )


@service.on(SkuReceived, emits=[SkuProcessed])
async def record_stock(event: SkuReceived, ctx: Context) -> None:
    """Store the reported number, then tell everyone: one transaction, so the event goes
    out if and only if the number was stored."""
    await record(ctx.session, event)
    await ctx.publish(SkuProcessed(sku=event.sku))  # staged; the relay sends it after commit
    note(ctx, event.sku, f"{event.warehouse} holds {event.quantity}")


@service.on(SkuProcessed)
async def recalculate(event: SkuProcessed, ctx: Context) -> None:
    """Keep the figure for sale up to date (newer versions only)."""
    figure = await available(ctx.session, event.sku)
    upsert = insert(ctx.session, for_sale).values(
        sku=figure.sku, available=figure.available, version=figure.version
    )
    await ctx.session.execute(
        upsert.on_conflict_do_update(
            index_elements=[for_sale.c.sku],
            set_={"available": upsert.excluded.available, "version": upsert.excluded.version},
            where=upsert.excluded.version >= for_sale.c.version,
        )
    )
    note(ctx, event.sku, f"{figure.available} available for sale")


@service.responds(GetAvailability)
async def availability(query: GetAvailability) -> Availability:
    async with store.transaction() as tx:  # a responder has no transaction of its own
        return await available(tx.session, query.sku)


async def held_by(session: AsyncSession, order_id: str) -> Any:
    """The order's row of ``order_holds`` (locked until commit on PostgreSQL), or None."""
    found = await session.execute(
        sa.select(order_holds.c.sku, order_holds.c.quantity, order_holds.c.status)
        .where(order_holds.c.order_id == order_id)
        .with_for_update()
    )
    return found.one_or_none()


@reserving.on(ReserveStock, emits=[StockReserved, StockUnavailable, SkuProcessed])
async def reserve_stock(event: ReserveStock, ctx: Context) -> None:
    """Hold the units if enough are available; the SKU's figure changes everywhere."""
    session = ctx.session
    if (before := await held_by(session, event.order_id)) is not None:
        note(ctx, event.sku, f"{event.order_id}: {before.status} already, nothing to do")
        return
    await bump(session, event.sku)  # first: concurrent reservations of the SKU wait here
    figure = await available(session, event.sku)
    enough = figure.available >= event.quantity
    quantity, status = (event.quantity, "reserved") if enough else (0, "refused")
    await session.execute(
        insert(session, order_holds)
        .values(order_id=event.order_id, sku=event.sku, quantity=quantity, status=status)
        .on_conflict_do_nothing()
    )
    if enough:
        await hold(session, event.sku, event.quantity)
        await ctx.publish(StockReserved(**event.model_dump()))
        left = figure.available - event.quantity
        note(ctx, event.sku, f"{event.order_id}: {event.quantity} reserved, {left} left")
    else:
        await ctx.publish(
            StockUnavailable(order_id=event.order_id, sku=event.sku, available=figure.available)
        )
        note(ctx, event.sku, f"{event.order_id}: only {figure.available}, none reserved")
    await ctx.publish(SkuProcessed(sku=event.sku))


@reserving.on(ReleaseStock, emits=[SkuProcessed])
async def release_stock(event: ReleaseStock, ctx: Context) -> None:
    """Give back what the order holds (once); none held: refuse its reservation later."""
    session = ctx.session
    before = await held_by(session, event.order_id)
    if before is None:
        values = {"order_id": event.order_id, "sku": event.sku, "quantity": 0}
        statement = insert(session, order_holds).values(**values, status="released")
        await session.execute(statement.on_conflict_do_nothing())
        note(ctx, event.sku, f"{event.order_id}: nothing held, nothing to release")
        return
    if before.status != "reserved":
        note(ctx, event.sku, f"{event.order_id}: {before.status} already, nothing to do")
        return
    await bump(session, before.sku)
    await hold(session, before.sku, -before.quantity)
    await session.execute(
        sa.update(order_holds)
        .where(order_holds.c.order_id == event.order_id)
        .values(status="released")
    )
    await ctx.publish(SkuProcessed(sku=before.sku))
    note(ctx, before.sku, f"{event.order_id}: {before.quantity} released")
