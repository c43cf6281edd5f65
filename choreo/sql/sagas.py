"""The rows of sagas (``choreo.saga``), in the handler's transaction of a store.

One row per instance in ``choreo_saga`` (saga name, key): state (JSON), status, version;
one row per event applied to it in ``choreo_saga_history``. An event of a saga:

* a ``starts`` event inserts the instance first (``ON CONFLICT DO NOTHING``): on
  PostgreSQL a second start of the same key waits on that insert until the first commits,
  then finds the row and is a duplicate;
* any other event reads the instance ``FOR UPDATE`` (PostgreSQL): a second event of the
  same instance waits until the first committed, then reads what it left;
* the state is written back with the version read (``UPDATE ... WHERE version = v``):
  zero rows means another transaction changed the instance in between (SQLite without
  the inbox's write lock, a foreign message without id): ``SagaConflict``, and the
  handler runs again, following its ``Retry``, in a new transaction.

Timeouts are outbox rows with a due time (``Store.stage``); cancelling one deletes its row
(``Store.cancel``), in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import ChoreoError, ConfigurationError
from ..transports.base import Message
from .store import Store
from .tables import SAGA, SAGA_HISTORY, utcnow

__all__ = ["SagaConflict", "SagaRows"]


class SagaConflict(ChoreoError):
    """The instance changed since it was read: this attempt is rolled back and retried."""


class SagaRows:
    """The saga tables of one store."""

    def __init__(self, store: object, where: str) -> None:
        if not isinstance(store, Store):
            raise ConfigurationError(f"{where}: store must be a choreo.sql.Store, got {store!r}")
        self.store = store
        insert = postgresql.insert if store.postgres else sqlite.insert
        self._create = insert(SAGA).on_conflict_do_nothing()  # built once

    # -- in the handler's transaction -------------------------------------------------------

    async def create(
        self, session: AsyncSession, saga: str, key: str, state: Mapping[str, Any], status: str
    ) -> bool:
        """Insert the instance at version 0; False if it exists (a duplicate start)."""
        now = utcnow()
        row = {
            "saga": saga,
            "key": key,
            "state": dict(state),
            "status": status,
            "version": 0,
            "created_at": now,
            "updated_at": now,
        }
        result = await session.execute(self._create, row)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def load(self, session: AsyncSession, saga: str, key: str) -> Any:
        """The instance's row (``state``, ``status``, ``version``), locked until the commit
        on PostgreSQL; None if there is none."""
        query = (
            sa.select(SAGA.c.state, SAGA.c.status, SAGA.c.version)
            .where(SAGA.c.saga == saga, SAGA.c.key == key)
            .with_for_update()
        )
        return (await session.execute(query)).one_or_none()

    async def save(
        self,
        session: AsyncSession,
        saga: str,
        key: str,
        *,
        state: Mapping[str, Any],
        status: str,
        version: int,
        event: str,
        message_id: str | None,
    ) -> int:
        """Write the state read at ``version`` back as ``version + 1``, with its history
        row; ``SagaConflict`` if the instance is no longer at ``version``."""
        now = utcnow()
        result = await session.execute(
            sa.update(SAGA)
            .where(SAGA.c.saga == saga, SAGA.c.key == key, SAGA.c.version == version)
            .values(state=dict(state), status=status, version=version + 1, updated_at=now)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise SagaConflict(
                f"saga {saga!r}, instance {key!r}: changed by another transaction since it was "
                f"read at version {version}; retried"
            )
        await session.execute(
            sa.insert(SAGA_HISTORY).values(
                saga=saga,
                key=key,
                version=version + 1,
                event=event,
                message_id=message_id,
                status=status,
                handled_at=now,
            )
        )
        return version + 1

    async def schedule(
        self, session: AsyncSession, message: Message, delay: float, key: str | None
    ) -> None:
        """Stage ``message`` (an event, its ordering ``key``) in the outbox, due ``delay``
        seconds from now."""
        await self.store.stage(session, message, delay, key)

    async def cancel(self, session: AsyncSession, message_id: str) -> bool:
        """Delete the unsent outbox row of ``message_id``; see ``Store.cancel``."""
        return await self.store.cancel(session, message_id)

    # -- reading, outside handlers (choreo saga list/show, tests) ---------------------------

    async def get(self, saga: str, key: str) -> tuple[Any, list[Any]] | None:
        """The instance's row and its history rows (oldest first), or None."""
        async with self.store.sessions() as session:
            row = (
                await session.execute(sa.select(SAGA).where(SAGA.c.saga == saga, SAGA.c.key == key))
            ).one_or_none()
            if row is None:
                return None
            history = await session.execute(
                sa.select(SAGA_HISTORY)
                .where(SAGA_HISTORY.c.saga == saga, SAGA_HISTORY.c.key == key)
                .order_by(SAGA_HISTORY.c.version)
            )
            return row, list(history.all())

    async def find(self, saga: str, status: str | None, limit: int) -> list[Any]:
        """Rows of the saga's instances (``status``: only those), last updated first."""
        query = sa.select(SAGA).where(SAGA.c.saga == saga)
        if status is not None:
            query = query.where(SAGA.c.status == status)
        query = query.order_by(SAGA.c.updated_at.desc(), SAGA.c.key).limit(limit)
        async with self.store.sessions() as session:
            return list((await session.execute(query)).all())
