"""wishlist: tells users when a SKU they wished for can be bought again.

On ``sku_processed`` it asks inventory for the SKU's availability. When the SKU goes from
none to some (a newer ``version`` than the last one applied), every user who wished for
it gets one notification: an "email" row and a log line. The state change and the
notifications are written in one transaction, and a notification is unique per user,
SKU and version, so redelivered or repeated events notify nobody twice.
"""

from __future__ import annotations

import logging
import sqlite3
from functools import cache

from choreo import Context, Service

from ..events import Availability, GetAvailability, SkuProcessed
from ..storage import open_db

log = logging.getLogger("services.wishlist")
service = Service("wishlist")

SCHEMA = """
CREATE TABLE IF NOT EXISTS wishes (user TEXT NOT NULL, email TEXT NOT NULL, sku TEXT NOT NULL,
    PRIMARY KEY (user, sku));
CREATE TABLE IF NOT EXISTS sku_state (sku TEXT PRIMARY KEY, available INTEGER NOT NULL,
    version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (user TEXT NOT NULL, email TEXT NOT NULL,
    sku TEXT NOT NULL, version INTEGER NOT NULL, correlation_id TEXT,
    sent_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (user, sku, version));
"""
SEED = """
INSERT OR IGNORE INTO wishes VALUES
    ('alice', 'alice@example.com', 'SKU-2'), ('alice', 'alice@example.com', 'SKU-4'),
    ('bob', 'bob@example.com', 'SKU-2'), ('carol', 'carol@example.com', 'SKU-3'),
    ('carol', 'carol@example.com', 'SKU-5')
"""


@cache
def db() -> sqlite3.Connection:
    return open_db("wishlist", SCHEMA, SEED)


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
    conn = db()
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute(
        "SELECT available, version FROM sku_state WHERE sku = ?", (event.sku,)
    ).fetchone()
    before, version = row if row else (0, 0)
    if reply.version <= version:  # an answer we have already applied, or an older one
        conn.execute("COMMIT")
        log.info(f"{event.sku} nothing new", extra=where)
        return
    conn.execute(
        "INSERT INTO sku_state VALUES (?, ?, ?) ON CONFLICT (sku) DO UPDATE SET "
        "available = excluded.available, version = excluded.version",
        (event.sku, reply.available, reply.version),
    )
    emailed = []
    if before == 0 and reply.available > 0:
        wishers = conn.execute("SELECT user, email FROM wishes WHERE sku = ?", (event.sku,))
        for user, email in wishers.fetchall():
            inserted = conn.execute(
                "INSERT OR IGNORE INTO notifications (user, email, sku, version, correlation_id) "
                "VALUES (?, ?, ?, ?, ?)",
                (user, email, event.sku, reply.version, correlation_id),
            ).rowcount
            if inserted:
                emailed.append(email)
    conn.execute("COMMIT")
    if emailed:
        log.info(f"{event.sku} emailed {', '.join(emailed)}: back in stock", extra=where)
    else:
        log.info(f"{event.sku} {reply.available} available, nobody to notify", extra=where)
