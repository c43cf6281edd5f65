"""catalog: shows which products can be bought.

On ``sku_processed`` it asks inventory for the SKU's availability and marks the product
available or not. Answers older than the one already applied (``version``) are ignored,
so redeliveries and concurrent handlers cannot roll a product back.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from choreo import Context, Service

from ..events import Availability, GetAvailability, SkuProcessed
from ..storage import DemoStore, Seed, insert

log = logging.getLogger("services.catalog")

metadata = sa.MetaData()
products = sa.Table(
    "products",
    metadata,
    sa.Column("sku", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("available", sa.Integer, nullable=False, server_default="0"),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
)
SEED: Seed = {
    products: [
        {"sku": sku, "name": name}
        for sku, name in [
            ("SKU-1", "Espresso machine"),
            ("SKU-2", "Burr grinder"),
            ("SKU-3", "Milk jug"),
            ("SKU-4", "Tamper"),
            ("SKU-5", "Scale"),
            ("SKU-6", "Knock box"),
        ]
    ]
}


def open_store() -> DemoStore:
    """catalog's store, where ``CHOREO_DEMO_DB``/``CHOREO_DEMO_DATA`` say now."""
    return DemoStore("catalog", metadata, SEED)


store = open_store()
service = Service("catalog", store=store, concurrency=store.concurrency)


@service.on(SkuProcessed, requests=[GetAvailability])
async def refresh_product(event: SkuProcessed, ctx: Context) -> None:
    reply = await ctx.request(GetAvailability(sku=event.sku), Availability, timeout=10.0)
    upsert = insert(ctx.session, products).values(
        sku=event.sku, name=event.sku, available=int(reply.available > 0), version=reply.version
    )
    await ctx.session.execute(
        upsert.on_conflict_do_update(
            index_elements=[products.c.sku],
            set_={"available": upsert.excluded.available, "version": upsert.excluded.version},
            where=upsert.excluded.version > products.c.version,
        )
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
