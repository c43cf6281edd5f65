"""The store's tables. ``METADATA`` is what ``Store.metadata`` hands to Alembic users.

``choreo_outbox``: one row per staged message, in staging order (``id``); ``sent_at`` is
set once the broker confirmed it. ``lease_owner``/``lease_until`` mark rows a relay is
publishing, so that several relays never publish one row at once. ``due_at``: not sent
before then (delayed messages). ``attempts``/``last_error``: failed publishes.
``routing_key``: what the relay publishes it with, its bucket (``topology.routing_key_of``
of its ordering key), fixed when staged; NULL in rows staged before the column existed,
which go out by the bucket of their message id. ``upgrade`` adds the column to an outbox
created by an older choreo (``Store.create_tables`` calls it).

``choreo_inbox``: one row per (service, message id) handled and committed; a redelivery
finds it and is acknowledged without running the handler.

``choreo_saga``: one row per saga instance (saga name, key): its state as JSON, its status
(running, completed) and its version, raised by each event applied to it (``sagas.py``).
``choreo_saga_history``: one row per event applied to an instance (``choreo saga show``).

Times are naive UTC ``datetime`` values, the same on every database, read from
``choreo.clock.CLOCK`` (the system's clock, unless a test advanced it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from ..clock import CLOCK

__all__ = [
    "INBOX",
    "METADATA",
    "NOTIFY_CHANNEL",
    "OUTBOX",
    "SAGA",
    "SAGA_HISTORY",
    "OutboxStatus",
    "upgrade",
    "utcnow",
]

NOTIFY_CHANNEL = "choreo_outbox"  # PostgreSQL: relays LISTEN, commits that staged NOTIFY


def utcnow() -> datetime:
    """Now, as the tables keep times: naive UTC, on choreo's clock (``choreo.clock``)."""
    return CLOCK.utcnow()


@dataclass(frozen=True)
class OutboxStatus:
    """What ``choreo outbox status`` prints."""

    pending: int  # committed, not yet confirmed by the broker
    oldest_pending: datetime | None  # created_at of the oldest of them (naive UTC)
    failing: int  # pending rows whose last publish failed
    last_error: str | None
    sent: int  # confirmed rows still kept (retention)
    scheduled: int = 0  # of the pending rows, those not due yet (delayed, saga timeouts)


METADATA = sa.MetaData()

OUTBOX = sa.Table(
    "choreo_outbox",
    METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("message_id", sa.String(64), nullable=False, unique=True),
    sa.Column("event", sa.String(255), nullable=False),
    sa.Column("body", sa.LargeBinary(), nullable=False),
    sa.Column("headers", sa.JSON(), nullable=False),
    sa.Column("correlation_id", sa.String(255)),
    sa.Column("content_type", sa.String(255)),
    sa.Column("timestamp", sa.BigInteger()),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("due_at", sa.DateTime(), nullable=False),
    sa.Column("sent_at", sa.DateTime()),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", sa.DateTime()),
    sa.Column("attempts", sa.Integer(), nullable=False, default=0),
    sa.Column("last_error", sa.Text()),
    sa.Column("routing_key", sa.String(16)),  # the bucket; NULL: by the message id
)
ADDED = (OUTBOX.c.routing_key,)  # columns added since the first release: nullable
# what the relay looks for: unsent rows, in staging order (a partial index stays small)
sa.Index(
    "choreo_outbox_pending",
    OUTBOX.c.id,
    postgresql_where=OUTBOX.c.sent_at.is_(None),
    sqlite_where=OUTBOX.c.sent_at.is_(None),
)
sa.Index("choreo_outbox_sent_at", OUTBOX.c.sent_at)

INBOX = sa.Table(
    "choreo_inbox",
    METADATA,
    sa.Column("service", sa.String(255), primary_key=True),
    sa.Column("message_id", sa.String(255), primary_key=True),
    sa.Column("handled_at", sa.DateTime(), nullable=False),
)
sa.Index("choreo_inbox_handled_at", INBOX.c.handled_at)

SAGA = sa.Table(
    "choreo_saga",
    METADATA,
    sa.Column("saga", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("state", sa.JSON(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # running, completed
    sa.Column("version", sa.Integer(), nullable=False),  # events applied
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
)
sa.Index("choreo_saga_status", SAGA.c.saga, SAGA.c.status, SAGA.c.updated_at)

SAGA_HISTORY = sa.Table(
    "choreo_saga_history",
    METADATA,
    sa.Column("saga", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True),  # the version the event made
    sa.Column("event", sa.String(255), nullable=False),
    sa.Column("message_id", sa.String(255)),
    sa.Column("status", sa.String(16), nullable=False),  # after the event
    sa.Column("handled_at", sa.DateTime(), nullable=False),
)


def upgrade(connection: sa.Connection) -> None:
    """Add to the tables the columns of ``ADDED`` they lack (an outbox an older choreo
    created); idempotent, and old rows keep working (NULL)."""
    inspector = sa.inspect(connection)
    for column in ADDED:
        table = column.table.name
        if column.name in {found["name"] for found in inspector.get_columns(table)}:
            continue
        kind = column.type.compile(dialect=connection.dialect)
        exists = " IF NOT EXISTS" if connection.dialect.name == "postgresql" else ""
        connection.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN{exists} {column.name} {kind}"))
