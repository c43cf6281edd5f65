"""What the consuming loop and the bus need of a store (``choreo.sql.Store`` is one).

A service with a store handles each delivery in one database transaction: the inbox row
that marks the message handled, the handler's own writes and the events it publishes
(staged in the outbox) commit together, or not at all. A relay publishes what was
committed. The core of choreo knows only these protocols; the SQLAlchemy implementation
lives in ``choreo.sql`` (the ``sql`` extra) and is imported only by those who use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from .transports.base import Message

__all__ = ["Duplicate", "Relaying", "Send", "Skipped", "Staging", "Storage"]

Send = Callable[[list[Message]], Awaitable[list[BaseException | None]]]
"""Publish messages in order, each with its confirm; one result per message (None: sent)."""


class Duplicate(Exception):
    """The inbox holds this message already: it was handled (and committed) before."""


class Skipped(Exception):
    """Raised by a handler's wrapper (a saga) to acknowledge a message without effects:
    its transaction is rolled back and the observer reports ``outcome``."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome


class Staging(Protocol):
    """One handling (or ``store.transaction()``) transaction."""

    @property
    def session(self) -> Any:
        """The database session of the transaction (a SQLAlchemy ``AsyncSession``)."""

    async def stage(
        self, message: Message, due: float | None = None, key: str | None = None
    ) -> None:
        """Add ``message`` to the outbox, in this transaction; sent after the commit (not
        before ``due``, seconds since the epoch, when given), routed by the bucket of its
        event's ordering ``key`` (None: it has none; the bucket of its message id)."""


class Relaying(Protocol):
    """A running relay of one store; ``stop`` ends it."""

    async def stop(self) -> None: ...


class Storage(Protocol):
    """A database with an inbox and an outbox."""

    def handling(
        self, service: str, message_id: str | None
    ) -> AbstractAsyncContextManager[Staging]:
        """A transaction for handling ``message_id`` in ``service``: raises ``Duplicate``
        on entry when the inbox holds it already; commits on a clean exit, else rolls
        back. ``message_id=None`` (a foreign message): no inbox, the transaction only."""

    def relay(self, send: Send, observer: Any) -> Relaying:
        """Start publishing the committed outbox through ``send``."""
