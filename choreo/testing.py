"""``choreo.testing``: run your services in-process in your own tests, on a private
in-memory broker, and see what they published::

    from choreo.testing import harness

    async def test_inventory_tells_everyone() -> None:
        async with harness(inventory.service, catalog.service) as h:
            await h.publish(SkuReceived(sku="A1", quantity=5, warehouse="north"))
            await h.settle()                  # every handler done, every queue empty
            assert h.published_by("inventory") == [SkuProcessed(sku="A1")]
            assert await h.dead_letters("catalog") == []

Each harness has its own ``memory://<uuid>`` broker, forgotten when the block ends, so
tests never see each other's messages. What a handler publishes is told apart by the
``x-choreo-source`` header its context adds; ``h.publish`` (or ``h.bus.publish``) has no
source (``None``). Events of services with a store are recorded when their outbox relay
sends them, and ``settle()`` waits until every such outbox is empty. Services that
handle nothing (a feed that only emits) are accepted and
not started.

Time, for timeouts: ``h.advance(timedelta(minutes=15))`` moves choreo's clock (what the
stores take for now) forward and wakes the outbox relays, so delayed rows and saga
timeouts fall due at once; ``settle()`` then waits for them (rows not due yet do not hold
it up). The clock is set back when the harness ends. A saga's instances are read with
``await saga.instance(key)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from . import topology, wire
from .bus import Bus, connect
from .clock import CLOCK
from .dlq import DeadLetter, list_dead_letters
from .errors import ChoreoError, ConfigurationError, Unroutable
from .events import Event
from .service import Service
from .transports import memory
from .transports.base import Message
from .wire import source_of

__all__ = ["Harness", "NotSettled", "Published", "harness"]

E = TypeVar("E", bound=Event)
R = TypeVar("R", bound=Event)


class NotSettled(ChoreoError):
    """``settle()`` timed out; the message says what was still busy."""


@dataclass(frozen=True, slots=True)
class Published:
    """One event published through the harness's bus, and who published it."""

    source: str | None  # the service whose handler published it; None from outside
    event: Event
    message_id: str
    correlation_id: str | None

    @property
    def name(self) -> str:
        return type(self.event).__event_name__


class Harness:
    """Services running on a private in-memory broker; see :func:`harness`."""

    def __init__(self, bus: Bus, broker_name: str, services: tuple[Service, ...]) -> None:
        self.bus = bus
        self.services = services
        self.published: list[Published] = []
        self._broker_name = broker_name
        self._dlqs = {topology.dlq_name(bus.namespace, s.name) for s in services}
        self._stores = list({id(s.store): s.store for s in services if s.store}.values())
        self._types = _event_types(services)
        transport = bus.transport
        original = transport.publish

        async def publish(
            message: Message, exchange: str, routing_key: str = "", **options: Any
        ) -> None:
            """Every event the bus sends (bus.publish, ctx.publish, an outbox relay) is
            recorded once the broker took it (unroutable included, as bus.publish warns)."""
            try:
                await original(message, exchange, routing_key, **options)
            except Unroutable:
                self._record(message, exchange)
                raise
            self._record(message, exchange)

        transport.publish = publish  # type: ignore[method-assign]

    def _record(self, message: Message, exchange: str) -> None:
        name = message.type or ""
        if not name or exchange != topology.exchange_name(self.bus.namespace, name):
            return  # a request, a reply, a retry or a dead letter: not an event publish
        for event_type in self._types.get(name, ()):
            try:
                event = wire.decode(event_type, message, name)
                break
            except wire.Undecodable:  # another class of that name (a test module's own)
                continue
        else:
            return
        self.published.append(
            Published(
                source_of(message.headers), event, message.message_id or "", message.correlation_id
            )
        )

    async def publish(
        self,
        event: Event,
        *,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish ``event`` from outside the services (recorded with source ``None``)."""
        return await self.bus.publish(event, correlation_id=correlation_id, headers=headers)

    async def request(self, request: Event, reply_type: type[R], *, timeout: float = 5.0) -> R:
        """Ask the service that responds to ``request``, as ``bus.request`` does."""
        return await self.bus.request(request, reply_type, timeout=timeout)

    def published_by(self, source: str | None) -> list[Event]:
        """The events ``source`` published (``None``: published from outside), in order."""
        return [p.event for p in self.published if p.source == source]

    def events(self, event_type: type[E]) -> list[E]:
        """Every published event of ``event_type``, whoever published it, in order."""
        return [p.event for p in self.published if isinstance(p.event, event_type)]

    async def dead_letters(self, service: str) -> list[DeadLetter]:
        """The dead letters of ``service`` (its ``.dlq`` queue), oldest first; they stay."""
        return await list_dead_letters(self.bus, service, limit=10_000)

    def busy(self) -> list[str]:
        """What is still going on: handlers in flight, messages in queues (dead-letter
        queues aside), requests waiting for their reply. Empty when all is quiet."""
        busy = []
        if self.bus.in_flight:
            busy.append(f"{self.bus.in_flight} handler(s) in flight")
        pending = self.bus.transport.pending_requests
        if pending:
            busy.append(f"{pending} request(s) waiting for a reply")
        broker = memory.broker(self._broker_name)
        for queue in sorted(broker.queues):
            if queue in self._dlqs:
                continue
            ready, unsettled = broker.depth(queue), broker.unsettled(queue)
            if ready or unsettled:
                busy.append(f"queue {queue!r} holds {ready} ready, {unsettled} unsettled")
        return busy

    async def _outboxes(self) -> list[str]:
        """The stores of the services whose outbox still holds committed rows that are due
        (rows delayed beyond the clock's now wait for ``advance``)."""
        busy = []
        for store in self._stores:
            status = getattr(store, "status", None)
            found = await status() if status is not None else None
            pending = found.pending - getattr(found, "scheduled", 0) if found else 0
            if pending:
                busy.append(f"the outbox of {store!r} holds {pending} row(s) not yet sent")
        return busy

    def advance(self, by: timedelta | float) -> None:
        """Move choreo's clock forward by ``by`` (a ``timedelta`` or seconds), without
        sleeping: outbox rows due by then (saga timeouts, ``ctx.publish(delay=...)`` in a
        stored service) are published by the relays, woken now; ``settle()`` waits for
        them. The clock is set back when the harness ends."""
        CLOCK.advance(by)

    async def settle(self, timeout: float = 5.0, *, quiet_checks: int = 3) -> None:
        """Wait until no handler runs and every queue is empty (dead-letter queues aside),
        seen ``quiet_checks`` times in a row; ``NotSettled`` after ``timeout`` seconds,
        naming what is still busy (a handler that never returns, a long broker retry)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < quiet_checks:
            busy = self.busy() + await self._outboxes()
            quiet = 0 if busy else quiet + 1
            if busy and time.monotonic() >= deadline:
                raise NotSettled(f"not settled after {timeout}s: {'; '.join(busy)}")
            await asyncio.sleep(0.002 if not busy else 0.01)


@contextlib.asynccontextmanager
async def harness(
    *services: Service, namespace: str = "", **connect_options: Any
) -> AsyncIterator[Harness]:
    """Start ``services`` on a new private ``memory://`` broker; stop them and forget the
    broker when the block ends. ``connect_options`` go to :func:`choreo.connect`
    (``retry=``, ``on_unroutable=``, ...); ``shutdown_timeout`` defaults to 5 s here, so a
    handler stuck at the end of a test holds it up 5 s at most."""
    for service in services:
        if not isinstance(service, Service):
            raise ConfigurationError(f"harness() takes Service objects, got {service!r}")
    name = f"choreo-testing-{uuid.uuid4().hex}"
    connect_options.setdefault("shutdown_timeout", 5.0)
    bus = connect(f"memory://{name}", namespace=namespace, **connect_options)
    try:
        async with bus:
            h = Harness(bus, name, services)
            running = [s for s in services if s.handlers or s.responders]
            if running:
                await bus.start(*running)
            yield h
    finally:
        memory.forget(name)
        CLOCK.reset()


def _event_types(services: tuple[Service, ...]) -> dict[str, list[type[Event]]]:
    """The Event classes that may have been sent under each event name: those the services
    handle or declare first, then every other class of that name the process defines
    (test modules often define their own ``OrderPlaced``)."""
    found: dict[str, list[type[Event]]] = {}

    def add(cls: type[Event]) -> None:
        name = getattr(cls, "__event_name__", None)
        if isinstance(name, str) and cls not in found.setdefault(name, []):
            found[name].append(cls)

    for service in services:
        for handler in (*service.handlers.values(), *service.responders.values()):
            for cls in (handler.event_type, *handler.emits, *handler.requests):
                add(cls)
        for cls in (*service.emits, *service.requests):
            add(cls)
    pending: list[type[Event]] = [Event]
    while pending:
        for sub in pending.pop().__subclasses__():
            add(sub)
            pending.append(sub)
    return found
