"""inventory: records stock reported by warehouses and knows what can be sold.

* ``sku_received``: store the warehouse's number, then publish ``sku_processed``.
* ``sku_processed``: recalculate the number available for sale (stock minus
  reservations), the work that did not need to happen while the warehouse waited.
* ``GetAvailability``: answer catalog and wishlist with the current figure.
"""

from __future__ import annotations

import logging
import sqlite3
from functools import cache

from choreo import Context, Service

from ..events import Availability, GetAvailability, SkuProcessed, SkuReceived
from ..storage import open_db

log = logging.getLogger("services.inventory")
service = Service("inventory")

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    sku TEXT NOT NULL, warehouse TEXT NOT NULL, quantity INTEGER NOT NULL,
    PRIMARY KEY (sku, warehouse));
CREATE TABLE IF NOT EXISTS versions (sku TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (sku TEXT PRIMARY KEY, quantity INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS availability (
    sku TEXT PRIMARY KEY, available INTEGER NOT NULL, version INTEGER NOT NULL);
"""
SEED = """
INSERT OR IGNORE INTO reservations VALUES ('SKU-3', 2), ('SKU-5', 1)
"""


@cache
def db() -> sqlite3.Connection:
    return open_db("inventory", SCHEMA, SEED)


def available(sku: str) -> Availability:
    """Stock over all warehouses minus reservations, never below zero."""
    (stock,) = (
        db()
        .execute("SELECT COALESCE(SUM(quantity), 0) FROM stock WHERE sku = ?", (sku,))
        .fetchone()
    )
    row = db().execute("SELECT quantity FROM reservations WHERE sku = ?", (sku,)).fetchone()
    version = db().execute("SELECT version FROM versions WHERE sku = ?", (sku,)).fetchone()
    return Availability(
        sku=sku,
        available=max(0, stock - (row[0] if row else 0)),
        version=version[0] if version else 0,
    )


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
    """Store the reported number (a repeated report changes nothing), then tell everyone."""
    conn = db()
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute(
        "SELECT quantity FROM stock WHERE sku = ? AND warehouse = ?", (event.sku, event.warehouse)
    ).fetchone()
    if row is None or row[0] != event.quantity:
        conn.execute(
            "INSERT INTO stock VALUES (?, ?, ?) ON CONFLICT (sku, warehouse) "
            "DO UPDATE SET quantity = excluded.quantity",
            (event.sku, event.warehouse, event.quantity),
        )
        conn.execute(
            "INSERT INTO versions VALUES (?, 1) "
            "ON CONFLICT (sku) DO UPDATE SET version = version + 1",
            (event.sku,),
        )
    conn.execute("COMMIT")
    note(ctx, event.sku, f"{event.warehouse} holds {event.quantity}")
    await ctx.publish(SkuProcessed(sku=event.sku))


@service.on(SkuProcessed)
async def recalculate(event: SkuProcessed, ctx: Context) -> None:
    """Keep the figure for sale up to date (newer versions only)."""
    figure = available(event.sku)
    db().execute(
        "INSERT INTO availability VALUES (?, ?, ?) ON CONFLICT (sku) DO UPDATE SET "
        "available = excluded.available, version = excluded.version "
        "WHERE excluded.version >= availability.version",
        (figure.sku, figure.available, figure.version),
    )
    note(ctx, event.sku, f"{figure.available} available for sale")


@service.responds(GetAvailability)
async def availability(query: GetAvailability) -> Availability:
    return available(query.sku)
