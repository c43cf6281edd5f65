"""wishlist: tells users when a SKU they wished for can be bought again.

On ``sku_processed`` it asks inventory for the SKU's availability. When the SKU goes from
none to some (a newer ``version`` than the last one applied), every user who wished for
it gets one notification: an "email" row and a log line. The state change and the
notifications are written in the handler's transaction, and a notification is unique per
user, SKU and version, so redelivered or repeated events notify nobody twice.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from choreo import Context, Service

from ..events import Availability, GetAvailability, SkuProcessed
from ..storage import DemoStore, Seed, insert

log = logging.getLogger("services.wishlist")

metadata = sa.MetaData()
wishes = sa.Table(
    "wishes",
    metadata,
    sa.Column("user", sa.String, primary_key=True),
    sa.Column("email", sa.String, nullable=False),
    sa.Column("sku", sa.String, primary_key=True),
)
sku_state = sa.Table(  # the last availability applied per SKU
    "sku_state",
    metadata,
    sa.Column("sku", sa.String, primary_key=True),
    sa.Column("available", sa.Integer, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
)
notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("user", sa.String, nullable=False),
    sa.Column("email", sa.String, nullable=False),
    sa.Column("sku", sa.String, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("correlation_id", sa.String),
    sa.Column(
        "sent_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.current_timestamp(),
    ),
    sa.UniqueConstraint("user", "sku", "version"),
)
SEED: Seed = {
    wishes: [
        {"user": user, "email": f"{user}@example.com", "sku": sku}
        for user, sku in [
            ("alice", "SKU-2"),
            ("alice", "SKU-4"),
            ("bob", "SKU-2"),
            ("carol", "SKU-3"),
            ("carol", "SKU-5"),
        ]
    ]
}


def open_store() -> DemoStore:
    """wishlist's store, where ``CHOREO_DEMO_DB``/``CHOREO_DEMO_DATA`` say now."""
    return DemoStore("wishlist", metadata, SEED)


store = open_store()
service = Service("wishlist", store=store, concurrency=store.concurrency)


@service.on(SkuProcessed, requests=[GetAvailability])
async def notify_wishers(event: SkuProcessed, ctx: Context) -> None:
    reply = await ctx.request(GetAvailability(sku=event.sku), Availability, timeout=10.0)
    correlation_id = ctx.correlation_id or ctx.message_id
    where = {
        "service": ctx.service,
        "event": ctx.event_name,
        "sku": event.sku,
        "correlation_id": correlation_id,
    }
    session = ctx.session
    if reply.version == 0:  # inventory never had a report of this SKU
        log.info(f"{event.sku} nothing new", extra=where)
        return
    # the SKU's state row, locked until commit: handlers of one SKU take turns from here
    # (FOR UPDATE on PostgreSQL; SQLite has one writing transaction at a time anyway)
    await session.execute(
        insert(session, sku_state)
        .values(sku=event.sku, available=0, version=0)
        .on_conflict_do_nothing()
    )
    before, version = (
        await session.execute(
            sa.select(sku_state.c.available, sku_state.c.version)
            .where(sku_state.c.sku == event.sku)
            .with_for_update()
        )
    ).one()
    if reply.version <= version:  # an answer we have already applied, or an older one
        log.info(f"{event.sku} nothing new", extra=where)
        return
    await session.execute(
        sa.update(sku_state)
        .where(sku_state.c.sku == event.sku)
        .values(available=reply.available, version=reply.version)
    )
    emailed = []
    if before == 0 and reply.available > 0:
        wishers = await session.execute(
            sa.select(wishes.c.user, wishes.c.email)
            .where(wishes.c.sku == event.sku)
            .order_by(wishes.c.user)
        )
        for user, email in wishers.all():
            sent = await session.execute(
                insert(session, notifications)
                .values(
                    user=user,
                    email=email,
                    sku=event.sku,
                    version=reply.version,
                    correlation_id=correlation_id,
                )
                .on_conflict_do_nothing()
            )
            if sent.rowcount:
                emailed.append(email)
    if emailed:
        log.info(f"{event.sku} emailed {', '.join(emailed)}: back in stock", extra=where)
    else:
        log.info(f"{event.sku} {reply.available} available, nobody to notify", extra=where)
