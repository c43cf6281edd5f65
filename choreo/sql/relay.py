"""The outbox relay: publishes what stores committed, in staging order, with confirms.

One round: claim up to ``batch_size`` unsent, due rows that no other relay holds (a lease,
taken with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises writers), publish
them pipelined in ``id`` order, each with the routing key it was staged with (``Routed``:
its bucket, so partitioned consumers get it in its key's partition), then mark sent the
rows up to the first that failed. The rest keep their place and are published again after
a back-off (rows after a failure may go out twice: their message id is fixed, so inboxes
downstream drop the second). Rounds follow one another while rows wait; an idle relay
sleeps until a local commit wakes it, a NOTIFY arrives (PostgreSQL), a delayed row falls
due, or ``poll_interval`` passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ..observability.observer import Observer
from ..storage import Send
from ..transports.base import Message
from .tables import INBOX, NOTIFY_CHANNEL, OUTBOX, OutboxStatus, utcnow

__all__ = ["Relay", "Routed"]

log = logging.getLogger("choreo.sql")

MIN_BACKOFF, MAX_BACKOFF = 0.5, 30.0  # seconds between failing rounds
STOP_GRACE = 5.0  # seconds a stopping relay may finish its round
HOUSEKEEPING = 5.0  # seconds between pending-gauge updates (and retention checks)
RETENTION_EVERY = 600.0  # seconds between retention sweeps
RETENTION_BATCH = 1000  # rows deleted per statement

_COLUMNS = (
    OUTBOX.c.id,
    OUTBOX.c.message_id,
    OUTBOX.c.event,
    OUTBOX.c.body,
    OUTBOX.c.headers,
    OUTBOX.c.correlation_id,
    OUTBOX.c.content_type,
    OUTBOX.c.timestamp,
    OUTBOX.c.routing_key,
)


@dataclass(slots=True)
class Routed(Message):
    """An outbox row's message and the routing key it was staged with, which the bus's
    ``_send`` publishes it with (None: a row older than the column, by its message id)."""

    routing_key: str | None = None


def _message(row: Any) -> Routed:
    return Routed(
        body=row.body,
        message_id=row.message_id,
        type=row.event or None,
        correlation_id=row.correlation_id,
        content_type=row.content_type,
        timestamp=row.timestamp,
        headers=dict(row.headers or {}),
        routing_key=row.routing_key,
    )


class Relayed(Protocol):
    """What a relay needs of its store (``store.Store``)."""

    name: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    postgres: bool
    batch_size: int
    poll_interval: float
    lease_time: timedelta
    retention: timedelta

    def listen(self, wake: Callable[[], None]) -> Callable[[], None]: ...

    async def status(self) -> OutboxStatus: ...


class Relay:
    """Relays one store's outbox until :meth:`stop`."""

    def __init__(self, store: Relayed, send: Send, observer: Observer) -> None:
        self.store = store
        self.owner = uuid.uuid4().hex
        self._send = send
        self._observer = observer
        self._stopping = False
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._unlisten = store.listen(self._poke)
        self._listening: Any = None  # PostgreSQL: the connection that LISTENs
        self._lost: Any = None  # one PostgreSQL ended, to discard
        self._task = loop.create_task(self._run(), name=f"choreo relay {store.name}")
        self._housekeeping = loop.create_task(self._housekeep())

    def _poke(self) -> None:
        """A local commit staged rows (maybe in another thread: a sync test client's)."""
        with contextlib.suppress(RuntimeError):  # its loop is closed: nothing to wake
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Finish the round under way (up to ``STOP_GRACE`` s), then end."""
        self._stopping = True
        self._unlisten()
        self._wake.set()
        self._housekeeping.cancel()
        done, _ = await asyncio.wait({self._task}, timeout=STOP_GRACE)
        if not done:
            self._task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(self._task, self._housekeeping, return_exceptions=True)
        await self._unlisten_postgres()

    # -- rounds ------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff, failing = MIN_BACKOFF, False
        while not self._stopping:
            self._wake.clear()
            try:
                if self.store.postgres and self._listening is None:
                    await self._unlisten_postgres()  # a lost one, if any
                    await self._listen_postgres()
                sent, full, error = await self.round()
                if error is None:
                    if failing:
                        log.info("outbox of %s: publishing again", self.store.name)
                    backoff, failing = MIN_BACKOFF, False
                    if full or sent:
                        continue  # more may wait
                    await self._idle(await self._next_due())
                    continue
            except Exception as exc:  # the database: rows wait where they are
                error = exc
            if not failing:
                log.warning("outbox of %s: %s; retrying", self.store.name, _brief(error))
            failing = True
            await self._idle(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _idle(self, seconds: float) -> None:
        if self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _next_due(self) -> float:
        """Seconds until the next unsent row can be claimed, at most ``poll_interval``: a
        delayed row falls due, or the lease of a row another relay holds (or held, and
        died) runs out. Leased rows count from their lease, else an idle relay would
        spin, round after empty round, while they wait."""
        poll, now = self.store.poll_interval, utcnow()
        claimable_at = sa.case(
            (OUTBOX.c.lease_until > now, OUTBOX.c.lease_until), else_=OUTBOX.c.due_at
        )
        async with self.store.sessions() as session:
            due: datetime | None = await session.scalar(
                sa.select(sa.func.min(claimable_at)).where(OUTBOX.c.sent_at.is_(None))
            )
        if due is None:
            return poll
        return max(0.0, min(poll, (due - utcnow()).total_seconds()))

    async def round(self) -> tuple[int, bool, BaseException | None]:
        """Claim, publish, mark. Returns (rows sent, whether the batch was full, the first
        publish error)."""
        store, now = self.store, utcnow()
        async with store.sessions() as session:
            async with session.begin():
                claimable = (
                    sa.select(OUTBOX.c.id)
                    .where(
                        OUTBOX.c.sent_at.is_(None),
                        OUTBOX.c.due_at <= now,
                        sa.or_(OUTBOX.c.lease_until.is_(None), OUTBOX.c.lease_until < now),
                    )
                    .order_by(OUTBOX.c.id)
                    .limit(store.batch_size)
                    .with_for_update(skip_locked=True)
                )
                claimed = await session.execute(
                    sa.update(OUTBOX)
                    .where(OUTBOX.c.id.in_(claimable.scalar_subquery()))
                    .values(lease_owner=self.owner, lease_until=now + store.lease_time)
                    .returning(*_COLUMNS)
                )
                rows = sorted(claimed.all(), key=lambda row: row.id)
            if not rows:
                return 0, False, None
            try:
                results = await self._send([_message(row) for row in rows])
            except Exception as exc:  # e.g. an exchange could not be declared
                results = [exc] * len(rows)
            failed_at = next((i for i, result in enumerate(results) if result is not None), None)
            ok = rows if failed_at is None else rows[:failed_at]
            async with session.begin():
                if ok:
                    await session.execute(
                        sa.update(OUTBOX)
                        .where(OUTBOX.c.id.in_([row.id for row in ok]))
                        .values(sent_at=utcnow(), lease_owner=None, lease_until=None)
                    )
                error = None if failed_at is None else results[failed_at]
                if failed_at is not None:
                    await session.execute(
                        sa.update(OUTBOX)
                        .where(OUTBOX.c.id.in_([row.id for row in rows[failed_at:]]))
                        .values(
                            lease_owner=None,
                            lease_until=None,
                            attempts=OUTBOX.c.attempts + 1,
                            last_error=f"{type(error).__name__}: {error}"[:1000],
                        )
                    )
        if ok:
            self._observer.relayed(store.name, len(ok))
        return len(ok), len(rows) == store.batch_size, error

    # -- PostgreSQL LISTEN -------------------------------------------------------------------

    async def _listen_postgres(self) -> None:
        connection = await self.store.engine.connect()
        try:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
            driver.add_termination_listener(lambda *_: self._lost_listener())
        except BaseException:
            await connection.close()
            raise
        self._listening = connection

    def _lost_listener(self) -> None:
        """PostgreSQL ended the LISTEN connection: listen again on the next round (the poll
        covers meanwhile); the dead connection is discarded there."""
        self._lost, self._listening = self._listening, None
        self._wake.set()

    async def _unlisten_postgres(self) -> None:
        for connection in (self._lost, self._listening):
            await self._discard(connection)
        self._lost = self._listening = None

    @staticmethod
    async def _discard(connection: Any) -> None:
        if connection is not None:
            with contextlib.suppress(Exception):  # not back to the pool: it still LISTENs
                await connection.invalidate()
                await connection.close()

    # -- housekeeping: the pending gauge, retention ------------------------------------------

    async def _housekeep(self) -> None:
        loop = asyncio.get_running_loop()
        swept_at = loop.time() - RETENTION_EVERY  # the first sweep at once
        while True:
            try:
                status = await self.store.status()
                self._observer.outbox_pending(self.store.name, status.pending)
                if loop.time() - swept_at >= RETENTION_EVERY:
                    await self.sweep()
                    swept_at = loop.time()
            except Exception as exc:
                log.debug("outbox housekeeping of %s: %s", self.store.name, exc)
            await asyncio.sleep(HOUSEKEEPING)

    async def sweep(self) -> int:
        """Delete sent outbox rows and inbox rows older than the retention, in batches."""
        cutoff = utcnow() - self.store.retention
        deleted = 0
        for table, old, key in (
            (OUTBOX, OUTBOX.c.sent_at < cutoff, sa.tuple_(OUTBOX.c.id)),
            (INBOX, INBOX.c.handled_at < cutoff, sa.tuple_(INBOX.c.service, INBOX.c.message_id)),
        ):
            while True:
                async with self.store.sessions() as session, session.begin():
                    batch = sa.select(*key.clauses).where(old).limit(RETENTION_BATCH)
                    result = await session.execute(sa.delete(table).where(key.in_(batch)))
                count = int(result.rowcount)  # type: ignore[attr-defined]
                deleted += count
                if count < RETENTION_BATCH:
                    break
        return deleted


def _brief(error: BaseException) -> str:
    """One line for the log: a database error without SQLAlchemy's statement dump."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"
