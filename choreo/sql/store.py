"""``Store``: a database (SQLAlchemy async engine) with choreo's inbox and outbox.

::

    store = Store(create_async_engine("postgresql+asyncpg://..."))  # or sqlite+aiosqlite
    await store.create_tables()
    billing = Service("billing", store=store)       # each delivery: one transaction

    async with store.transaction() as tx:           # outside a handler
        tx.session.add(Order(...))
        await tx.publish(OrderPlaced(...))          # staged; sent after the commit

What a handler of a stored service does runs in one transaction with the inbox row of
its message and the events it publishes (``ctx.session``, ``ctx.publish``); a relay of
the bus (``relay.py``) publishes the outbox once committed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .. import topology, wire
from ..clock import CLOCK
from ..errors import ConfigurationError
from ..events import Event, ordering_key_in, ordering_key_of
from ..observability import tracing
from ..storage import Duplicate, Relaying, Send
from ..transports.base import Message
from .relay import Relay
from .tables import INBOX, METADATA, NOTIFY_CHANNEL, OUTBOX, OutboxStatus, upgrade, utcnow

__all__ = ["OutboxStatus", "Store", "Transaction", "utcnow"]

log = logging.getLogger("choreo.sql")

Delay = timedelta | float | None


def _seconds(delay: Delay) -> float:
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay or 0)
    if seconds < 0:
        raise ConfigurationError(f"a delay cannot be negative ({delay!r})")
    return seconds


class Store:
    """The inbox and outbox of a database; see the module docstring.

    ``retention``: sent outbox rows and inbox rows older than this are deleted in the
    background (the inbox recognises redeliveries within this window). ``poll_interval``:
    how often an idle relay looks for rows committed elsewhere (PostgreSQL wakes it at
    once through LISTEN/NOTIFY; SQLite has only this). ``batch_size``: rows a relay
    publishes per round trip. ``lease``: seconds a relay holds the rows it publishes
    before another relay may take them (a relay that died).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        name: str | None = None,
        retention: timedelta = timedelta(days=7),
        poll_interval: float = 1.0,
        batch_size: int = 500,
        lease: float = 60.0,
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                "Store(engine): an AsyncEngine, from sqlalchemy.ext.asyncio.create_async_engine"
            )
        dialect = engine.dialect.name
        if dialect not in ("postgresql", "sqlite"):
            raise ConfigurationError(f"Store: {dialect!r} is not supported (PostgreSQL, SQLite)")
        if batch_size < 1 or poll_interval <= 0 or lease <= 0:
            raise ConfigurationError("Store: batch_size, poll_interval and lease must be > 0")
        self.engine = engine
        self.metadata = METADATA
        self.name = name or engine.url.render_as_string(hide_password=True)
        self.retention = retention
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.lease = lease
        self.lease_time = timedelta(seconds=lease)
        self.postgres = dialect == "postgresql"
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)
        insert = postgresql.insert if self.postgres else sqlite.insert
        # built once: SQLAlchemy would otherwise rebuild it for every delivery
        self._claim = insert(INBOX).on_conflict_do_nothing()
        self._listeners: set[Callable[[], None]] = set()

    def __repr__(self) -> str:
        return f"Store({self.name!r})"

    async def create_tables(self) -> None:
        """Create choreo's tables unless they exist (idempotent): ``choreo_outbox``,
        ``choreo_inbox``, and ``choreo_saga`` with ``choreo_saga_history`` (sagas); add
        to existing ones the columns a newer choreo needs (``tables.upgrade``)."""
        async with self.engine.begin() as connection:
            await connection.run_sync(METADATA.create_all)
            await connection.run_sync(upgrade)

    # -- transactions ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A session in a transaction; what ``tx.publish`` stages is sent once it commits."""
        async with self.sessions() as session, session.begin():
            tx = Transaction(self, session)
            yield tx
            await tx.flush()
        if tx.staged:
            self.committed()

    @contextlib.asynccontextmanager
    async def handling(self, service: str, message_id: str | None) -> AsyncIterator[Transaction]:
        """The transaction of one handling attempt (see ``choreo.storage.Storage``)."""
        async with self.sessions() as session, session.begin():
            if message_id is not None:
                row = {"service": service, "message_id": message_id, "handled_at": utcnow()}
                claimed = await session.execute(self._claim, row)
                if claimed.rowcount == 0:  # type: ignore[attr-defined]
                    raise Duplicate(f"{service} handled message {message_id} already")
            tx = Transaction(self, session)
            yield tx
            await tx.flush()
        if tx.staged:
            self.committed()

    async def publish(
        self,
        session: AsyncSession,
        event: Event,
        *,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: Delay = None,
    ) -> str:
        """Stage ``event`` in ``session``'s transaction (yours to commit); return its
        message id. The relay sends it after the commit (found by LISTEN or its poll)."""
        message = _encoded(event, correlation_id, headers)
        await self.write(session, [self.row(message, _seconds(delay), _routed(message, event))])
        return message.message_id  # type: ignore[return-value]  # wire always sets it

    async def stage(
        self, session: AsyncSession, message: Message, delay: float = 0.0, key: str | None = None
    ) -> None:
        """Insert ``message`` (an event whose ordering key is ``key``) into the outbox in
        ``session``'s transaction."""
        await self.write(session, [self.row(message, delay, _bucket(message, key))])

    def row(
        self, message: Message, delay: float = 0.0, routing_key: str | None = None
    ) -> dict[str, Any]:
        """The outbox row of ``message``, due ``delay`` seconds from now, to be published
        with ``routing_key`` (by default: the bucket of its ordering key, read from its
        body, or of its message id when it has none; see ``_routed``)."""
        now = utcnow()
        return {
            "message_id": message.message_id,
            "event": message.type or "",
            "body": message.body,
            "headers": dict(message.headers),
            "correlation_id": message.correlation_id,
            "content_type": message.content_type,
            "timestamp": message.timestamp,
            "created_at": now,
            "due_at": now + timedelta(seconds=delay) if delay else now,
            "attempts": 0,
            "routing_key": routing_key or _routed(message),
        }

    async def write(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` in one statement (several rows per round trip)."""
        await session.execute(sa.insert(OUTBOX), rows)
        if self.postgres:  # reaches the relays' LISTEN at commit, not on rollback
            await session.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, "")))

    async def cancel(self, session: AsyncSession, message_id: str) -> bool:
        """Delete the outbox row of ``message_id`` in ``session``'s transaction, unless it
        was sent or a relay is sending it: True if it will not be sent (once committed)."""
        now = utcnow()
        result = await session.execute(
            sa.delete(OUTBOX).where(
                OUTBOX.c.message_id == message_id,
                OUTBOX.c.sent_at.is_(None),
                sa.or_(OUTBOX.c.lease_until.is_(None), OUTBOX.c.lease_until < now),
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def committed(self) -> None:
        """Staged rows were committed in this process: wake its relays now."""
        for wake in list(self._listeners):
            wake()

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` after each local commit that staged, and when a test advances
        choreo's clock (rows may have fallen due); returns the undo."""
        self._listeners.add(wake)
        unclock = CLOCK.on_advance(wake)

        def undo() -> None:
            self._listeners.discard(wake)
            unclock()

        return undo

    # -- the relay and its status ------------------------------------------------------------

    def relay(self, send: Send, observer: Any) -> Relaying:
        return Relay(self, send, observer)

    async def status(self) -> OutboxStatus:
        pending = OUTBOX.c.sent_at.is_(None)
        async with self.sessions() as session:
            later = sa.case((OUTBOX.c.due_at > utcnow(), 1))
            count, oldest, failing, scheduled = (
                await session.execute(
                    sa.select(
                        sa.func.count(),
                        sa.func.min(OUTBOX.c.created_at),
                        sa.func.count(OUTBOX.c.last_error),
                        sa.func.count(later),
                    ).where(pending)
                )
            ).one()
            last_error = await session.scalar(
                sa.select(OUTBOX.c.last_error)
                .where(pending, OUTBOX.c.last_error.is_not(None))
                .order_by(OUTBOX.c.id.desc())
                .limit(1)
            )
            sent = await session.scalar(
                sa.select(sa.func.count()).where(OUTBOX.c.sent_at.is_not(None))
            )
        return OutboxStatus(
            int(count), oldest, int(failing), last_error, int(sent or 0), int(scheduled)
        )


class Transaction:
    """One transaction of a store: ``session`` and ``publish`` (staged, sent after commit).
    Staged rows are written together, in one statement, just before the commit."""

    def __init__(self, store: Store, session: AsyncSession) -> None:
        self.store = store
        self.session = session
        self.staged = 0
        self._rows: list[dict[str, Any]] = []

    async def publish(
        self,
        event: Event,
        *,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: Delay = None,
    ) -> str:
        """Stage ``event``; return its message id (fixed now: a re-publish after a relay
        crash carries the same id, which inboxes downstream recognise)."""
        message = _encoded(event, correlation_id, headers)
        self._rows.append(self.store.row(message, _seconds(delay), _routed(message, event)))
        self.staged += 1
        return message.message_id  # type: ignore[return-value]  # wire always sets it

    async def stage(
        self, message: Message, due: float | None = None, key: str | None = None
    ) -> None:
        """Stage an encoded message (what ``ctx.publish`` of a stored service does), its
        event's ordering key ``key`` (None: it has none). ``due``
        (seconds since the epoch, as ``time.time()`` gives) is kept as a delay from now,
        so a row is due as long after its staging on choreo's clock (which tests move)."""
        delay = 0.0 if due is None else max(0.0, due - time.time())
        self._rows.append(self.store.row(message, delay, _bucket(message, key)))
        self.staged += 1

    async def flush(self) -> None:
        """Write the staged rows (the store does, before it commits)."""
        rows, self._rows = self._rows, []
        if rows:
            await self.store.write(self.session, rows)


def _encoded(
    event: Event, correlation_id: str | None, headers: Mapping[str, Any] | None
) -> Message:
    message = wire.encode(event, correlation_id=correlation_id, headers=headers)
    if tracing.ENABLED:
        tracing.inject(message.headers)
    return message


def _bucket(message: Message, key: str | None) -> str:
    """The routing key of an event whose ordering key is ``key`` (None: it has none)."""
    return topology.routing_key_of(key, message.message_id)


def _routed(message: Message, event: Event | None = None) -> str:
    """The routing key of an outbox row: the bucket of the event's ordering key (``event``
    at hand, else read back from the message's body by its class: a message staged without
    its key), or of the message id when it has none, as ``Bus.publish`` routes it."""
    if event is not None:
        key = ordering_key_of(event)
    else:
        key = ordering_key_in(message.type or "", message.body)
    return topology.routing_key_of(key, message.message_id)
