"""orders: takes orders, and shows where each one ended.

* ``place``: write the order row and stage ``order_placed`` in one transaction of
  orders' store (``store.transaction()``, outside any handler: ``POST /orders`` in
  ``http.py``, or the demo); the relay publishes it once committed, and the checkout saga
  takes it from there.
* ``order_confirmed`` / ``order_cancelled`` (from the saga): the order's final status.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from choreo import Context, Service
from choreo.sql import Transaction

from ..events import OrderCancelled, OrderConfirmed, OrderPlaced
from ..storage import DemoStore, insert

log = logging.getLogger("services.orders")

PLACED, CONFIRMED, CANCELLED = "placed", "confirmed", "cancelled"

metadata = sa.MetaData()
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.String, primary_key=True),
    sa.Column("sku", sa.String, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("reason", sa.String),
)


def open_store() -> DemoStore:
    """orders' store, where ``CHOREO_DEMO_DB``/``CHOREO_DEMO_DATA`` say now."""
    return DemoStore("orders", metadata)


store = open_store()
service = Service("orders", store=store, concurrency=store.concurrency, emits=[OrderPlaced])


async def place(tx: Transaction, order: OrderPlaced) -> str | None:
    """Write the order and stage ``order_placed`` in ``tx``; its message id, or None when
    an order of that id exists already (nothing written, nothing staged)."""
    written = await tx.session.execute(
        insert(tx.session, orders)
        .values(**order.model_dump(), status=PLACED)
        .on_conflict_do_nothing()
    )
    if not written.rowcount:  # type: ignore[attr-defined]
        return None
    return await tx.publish(order, correlation_id=order.order_id)


def note(ctx: Context, sku: str, what: str) -> None:
    log.info(
        what,
        extra={
            "service": ctx.service,
            "event": ctx.event_name,
            "sku": sku,
            "correlation_id": ctx.correlation_id or ctx.message_id,
        },
    )


async def finish(ctx: Context, order_id: str, status: str, reason: str | None) -> None:
    """The order's final status (once: an order that ended already stays as it is)."""
    ended = await ctx.session.execute(
        sa.update(orders)
        .where(orders.c.order_id == order_id, orders.c.status == PLACED)
        .values(status=status, reason=reason)
        .returning(orders.c.sku)
    )
    sku = ended.scalar_one_or_none()
    what = f"{order_id} {status}" + (f" ({reason})" if reason else "")
    note(ctx, sku or "", what if sku else f"{what}: ended already, or no such order")


@service.on(OrderConfirmed)
async def confirmed(event: OrderConfirmed, ctx: Context) -> None:
    await finish(ctx, event.order_id, CONFIRMED, None)


@service.on(OrderCancelled)
async def cancelled(event: OrderCancelled, ctx: Context) -> None:
    await finish(ctx, event.order_id, CANCELLED, event.reason)
