"""inventory: records stock reported by warehouses and knows what can be sold.

* ``sku_received``: store the warehouse's number and stage ``sku_processed``: both commit
  in one transaction of inventory's store (with the inbox row of the report), and the
  relay publishes ``sku_processed`` once committed.
* ``sku_processed``: recalculate the number available for sale (stock minus
  reservations), the work that did not need to happen while the warehouse waited.
* ``GetAvailability``: answer catalog and wishlist with the current figure.

``POST /skus`` (``http.py``) records stock over HTTP the same way, outside a handler.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from choreo import Context, Service

from ..events import Availability, GetAvailability, SkuProcessed, SkuReceived
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
SEED: Seed = {reservations: [{"sku": "SKU-3", "quantity": 2}, {"sku": "SKU-5", "quantity": 1}]}


def open_store() -> DemoStore:
    """inventory's store, where ``CHOREO_DEMO_DB``/``CHOREO_DEMO_DATA`` say now."""
    return DemoStore("inventory", metadata, SEED)


store = open_store()
service = Service("inventory", store=store, concurrency=store.concurrency)


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
    bump = insert(session, versions).values(sku=report.sku, version=1)
    await session.execute(
        bump.on_conflict_do_update(
            index_elements=[versions.c.sku], set_={"version": versions.c.version + 1}
        )
    )
    return True


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
            "service": ctx.service,
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
