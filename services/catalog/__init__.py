"""catalog: shows which products can be bought.

On ``sku_processed`` it asks inventory for the SKU's availability and marks the product
available or not. Answers older than the one already applied (``version``) are ignored,
so redeliveries and concurrent handlers cannot roll a product back.
"""

from __future__ import annotations

import logging
import sqlite3
from functools import cache

from choreo import Context, Service

from ..events import Availability, GetAvailability, SkuProcessed
from ..storage import open_db

log = logging.getLogger("services.catalog")
service = Service("catalog")

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    sku TEXT PRIMARY KEY, name TEXT NOT NULL,
    available INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 0);
"""
SEED = """
INSERT OR IGNORE INTO products (sku, name) VALUES
    ('SKU-1', 'Espresso machine'), ('SKU-2', 'Burr grinder'), ('SKU-3', 'Milk jug'),
    ('SKU-4', 'Tamper'), ('SKU-5', 'Scale'), ('SKU-6', 'Knock box')
"""


@cache
def db() -> sqlite3.Connection:
    return open_db("catalog", SCHEMA, SEED)


@service.on(SkuProcessed, requests=[GetAvailability])
async def refresh_product(event: SkuProcessed, ctx: Context) -> None:
    reply = await ctx.request(GetAvailability(sku=event.sku), Availability, timeout=10.0)
    db().execute(
        "INSERT INTO products (sku, name, available, version) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (sku) DO UPDATE SET available = excluded.available, "
        "version = excluded.version WHERE excluded.version > products.version",
        (event.sku, event.sku, int(reply.available > 0), reply.version),
    )
    state = "available" if reply.available > 0 else "unavailable"
    log.info(
        f"{event.sku} marked {state}",
        extra={
            "service": ctx.service,
            "event": ctx.event_name,
            "sku": event.sku,
            "correlation_id": ctx.correlation_id or ctx.message_id,
        },
    )
