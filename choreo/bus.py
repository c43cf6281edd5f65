"""``connect()`` and the ``Bus``: publish events, start and stop consuming, run a worker.

::

    async with connect("amqp://guest:guest@localhost:5672/") as bus:
        await bus.publish(SkuProcessed(sku="A1"))      # returns once the broker confirmed
        await bus.start(catalog, inventory)            # declares topology, consumes
        ...
        await bus.stop()                               # graceful

Where things happen: an event's message is built in ``wire.py``, routed by the names in
``topology.py``, handled in ``_runtime/dispatch.py`` and settled in ``_runtime/settle.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Generator, Mapping
from types import TracebackType
from typing import Any, TypeVar, Unpack

from . import config, topology, wire
from ._runtime.declare import Declarer
from ._runtime.delays import DelayLevels
from ._runtime.relays import Relays
from ._runtime.requests import send_request
from ._runtime.running import Running
from ._runtime.signals import run_until_signalled
from ._runtime.worker import Setup
from .delay import Delay, broker_seconds
from .errors import ChoreoError, ConfigurationError, Unroutable
from .events import Event, ordering_key_in, ordering_key_of
from .observability import tracing
from .service import Service
from .settings import DEFAULT_REQUEST_TIMEOUT, BusOptions, Settings, settings_from
from .transports import transport_for
from .transports.base import FANOUT, Message, Transport

__all__ = ["Bus", "connect"]

log = logging.getLogger("choreo")

R = TypeVar("R", bound=Event)


def connect(
    url: str | None = None,
    *,
    namespace: str | None = None,
    publish_timeout: float = 30.0,
    publish_window: int = 1024,
    connection_name: str | None = None,
    **options: Unpack[BusOptions],
) -> Bus:
    """A bus for the broker at ``url``: ``amqp://...``, ``amqps://...`` or ``memory://[NAME]``.

    ``url=None`` reads ``CHOREO_BROKER_URL`` (default ``amqp://guest:guest@localhost:5672/``);
    ``namespace=None`` reads ``CHOREO_NAMESPACE``. Use it as ``async with connect() as bus``
    or ``bus = await connect()``; nothing touches the network before that. Several
    comma-separated ``amqp://`` URLs name the nodes of a cluster: each reconnect tries the
    next one. ``publish_timeout``: how long a publish may wait for its confirm, reconnects
    included, before ``PublishError``; at most ``publish_window`` wait at once, the others
    for a slot first (backpressure). The other keywords are ``choreo.settings.Settings``.
    """
    url = config.broker_url(url)
    settings = settings_from(options)
    if not isinstance(publish_window, int) or publish_window < 1:
        raise ConfigurationError("connect(): publish_window must be a positive int")
    name = connection_name or f"choreo pid={os.getpid()}"
    return Bus(
        transport_for(
            url,
            connection_name=name,
            publish_timeout=publish_timeout,
            publish_window=publish_window,
        ),
        url=url,
        namespace=config.namespace(namespace),
        settings=settings,
    )


class Bus:
    """A connection to the broker, shared by publishers and the services it runs."""

    def __init__(
        self,
        transport: Transport,
        *,
        url: str,
        namespace: str = "",
        settings: Settings | None = None,
    ) -> None:
        self.transport = transport
        self.url = url
        self.namespace = namespace
        self.settings = settings or Settings()
        self._observer = self.settings.observer
        self._declarer = Declarer(transport)
        setup = Setup(
            transport=transport,
            publisher=self,
            observer=self._observer,
            declare_queue=self._declarer.queue,
            max_message_size=self.settings.max_message_size,
        )
        self._running = Running(
            setup,
            namespace,
            self.declare,
            prefetch=self.settings.prefetch,
            concurrency=self.settings.concurrency,
            retry=self.settings.retry,
            queue_type=self.settings.queue_type,
            delivery_limit=self.settings.delivery_limit,
            shutdown_timeout=self.settings.shutdown_timeout,
            heartbeat=self.settings.partition_heartbeat,
        )
        self._relays = Relays(self._send, self._observer)
        self._delays = DelayLevels(self._declarer, namespace, self._observer)
        self._connected = False
        self._abort: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"Bus({self.redacted_url!r}, namespace={self.namespace!r})"

    @property
    def redacted_url(self) -> str:
        """The broker URL with its password replaced by ``***``: safe to print and log."""
        return config.redact(self.url)

    @property
    def declared_exchanges(self) -> frozenset[str]:
        """The exchanges this bus declared."""
        return frozenset(self._declarer.exchanges)

    @property
    def declared_queues(self) -> frozenset[str]:
        """The queues this bus declared (retry queues included)."""
        return frozenset(self._declarer.queues)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> Bus:
        """Connect to the broker (``ConnectionFailed`` if it cannot be reached)."""
        if not self._connected:
            await self.transport.connect()
            self._connected = True
            for store in self.settings.stores:
                self._relays.start(store)
        return self

    async def close(self) -> None:
        """Stop consuming (gracefully) and close the connection."""
        try:
            await self.stop()
            await self._relays.stop()
        finally:
            self._connected = False
            self._declarer.reset()
            self._delays.reset()
            await self.transport.close()

    async def __aenter__(self) -> Bus:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __await__(self) -> Generator[Any, None, Bus]:
        return self.open().__await__()

    # -- publishing --------------------------------------------------------------------

    async def publish(
        self,
        event: Event,
        *,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: Delay = None,
    ) -> str:
        """Publish ``event`` to its exchange; return its message id once the broker confirmed.

        Safe to call concurrently: publishes are pipelined on one confirm channel.
        ``delay`` (seconds or a ``timedelta``): delivered no earlier than that, through the
        broker's delay levels, in whole seconds rounded up, at most ``delay.MAX_DELAY``
        (about 24 days; more is a ``ConfigurationError``); see ``choreo/delay.py``.
        """
        self._check_connected()
        message = wire.encode(
            event, correlation_id=correlation_id, causation_id=causation_id, headers=headers
        )
        key = ordering_key_of(event)
        if delay:
            return await self._delays.publish(message, broker_seconds(delay), key)
        return await self._publish(message, key)

    async def publish_json(
        self,
        event_name: str,
        payload: Mapping[str, Any],
        *,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> str:
        """Publish an event given by name and fields, without its class and unvalidated
        (consumers validate it): what ``choreo publish`` does. Otherwise as :meth:`publish`.
        ``key``: its ordering key (routes it by its bucket); by default read from ``payload``
        as the keyed class of that name defines it, if this process has one."""
        self._check_connected()
        message = wire.encode_json(
            event_name, payload, correlation_id=correlation_id, headers=headers
        )
        found = ordering_key_in(event_name, message.body) if key is None else key
        return await self._publish(message, found)

    async def _publish(
        self, message: Message, key: str | None = None, routing_key: str | None = None
    ) -> str:
        """Publish to the event's exchange, routed by the bucket of ``key`` (partitions),
        or by ``routing_key`` when given (the bucket an outbox row was staged with)."""
        name = message.type or ""
        if tracing.ENABLED:
            tracing.inject(message.headers)
        exchange = topology.exchange_name(self.namespace, name)
        if exchange not in self._declarer.exchanges:
            await self._declarer.exchange(exchange, FANOUT)
        started = time.perf_counter()
        try:
            routing_key = routing_key or topology.routing_key_of(key, message.message_id)
            await self.transport.publish(message, exchange, routing_key, mandatory=True)
            self._observer.published(name, time.perf_counter() - started)
        except Unroutable:
            if self.settings.on_unroutable == "raise":
                raise Unroutable(
                    f"no queue is bound to {exchange!r}: nobody consumes {name!r} yet "
                    "(start the consumers, or run `choreo topology --apply`, first)"
                ) from None
            log.warning(
                "event %r was published to %r, which no queue is bound to: it was dropped. "
                "Start the consumers (or run `choreo topology --apply`) before publishing.",
                name,
                exchange,
            )
        return message.message_id  # type: ignore[return-value]  # wire always sets it

    async def _send(self, messages: list[Message]) -> list[BaseException | None]:
        """The outbox relay's publish: ``messages`` pipelined in their order, each with its
        confirm; their exchanges are declared first, so no publish waits behind another.
        Each goes out with the routing key its row was staged with (``sql.relay.Routed``;
        none, or a row older than that column: the bucket of its message id)."""
        for message in messages:
            exchange = topology.exchange_name(self.namespace, message.type or "")
            if exchange not in self._declarer.exchanges:
                await self._declarer.exchange(exchange, FANOUT)
        keys = [getattr(message, "routing_key", None) for message in messages]
        sent = await asyncio.gather(
            *(self._publish(m, routing_key=k) for m, k in zip(messages, keys, strict=True)),
            return_exceptions=True,
        )
        return [_relayed(result) for result in sent]

    async def request(
        self,
        request: Event,
        reply_type: type[R],
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> R:
        """Send ``request`` to the service that responds to it and return its reply.

        Raises ``NoResponder`` at once when no service responds to it, ``RequestTimeout``
        after ``timeout`` seconds without a reply, ``RemoteError`` when the responder
        raised, and ``InvalidReply`` when the reply is not a valid ``reply_type``.
        """
        self._check_connected()
        return await send_request(
            self._declarer,
            self.namespace,
            request,
            reply_type,
            timeout=timeout,
            correlation_id=correlation_id,
            causation_id=causation_id,
            headers=headers,
        )

    # -- consuming ---------------------------------------------------------------------

    async def start(self, *services: Service) -> None:
        """Declare the services' exchanges and queues, then consume; return once consuming."""
        for service in services:
            if isinstance(service, Service) and service.name in self._running:
                raise ConfigurationError(f"service {service.name!r} is started twice")
        await self.declare(*services)
        for service in services:
            try:
                await self._running.start(service)
            except BaseException:
                await self.stop()
                raise
            if service.store is not None:
                self._relays.start(service.store)

    async def declare(self, *services: Service) -> topology.Topology:
        """Declare every exchange, queue and binding the services need, without consuming.

        The deploy step: run it before anything publishes, so no event is dropped for
        want of a queue. Idempotent.
        """
        self._check_connected()
        names = [s.name for s in services]
        for service in services:
            if not isinstance(service, Service):
                raise ConfigurationError(f"expected Service objects, got {service!r}")
            if names.count(service.name) > 1:
                raise ConfigurationError(f"service {service.name!r} is started twice")
            if not service.handlers and not service.responders:
                raise ConfigurationError(f"service {service.name!r} has no handlers")
        plan = topology.plan(
            services,
            self.namespace,
            retry=self.settings.retry,
            queue_type=self.settings.queue_type,
            delivery_limit=self.settings.delivery_limit,
        )
        for exchange, kind in plan.exchanges:
            await self._declarer.exchange(exchange, kind)
        for queue in plan.queues:
            await self._declarer.queue(queue)
        for destination, source, key in plan.exchange_bindings:
            await self._declarer.bind_exchange(destination, source, key)
        log.info(
            "declared exchanges %s and queues %s",
            ", ".join(name for name, _ in plan.exchanges),
            ", ".join(q.name for q in plan.queues),
        )
        return plan

    async def stop(self, timeout: float | None = None) -> None:
        """Stop consuming, let handlers in flight finish (up to ``timeout`` s), then settle."""
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        await self._running.stop(timeout, self._abort)

    def abort(self) -> None:
        """Make a stop under way cancel its handlers now instead of waiting for them."""
        if self._abort is None:
            self._abort = asyncio.Event()
        self._abort.set()

    async def run(self, *services: Service) -> None:
        """Start ``services`` and consume until cancelled or sent SIGINT/SIGTERM; then stop
        gracefully. A second SIGINT/SIGTERM during the stop cancels the handlers at once."""
        self._abort = abort = asyncio.Event()
        await run_until_signalled(
            lambda: self.start(*services),
            self.stop,
            lambda: self._running.failed,
            abort,
            lambda: (
                f"waiting up to {self.settings.shutdown_timeout:g}s for {self.in_flight} handler(s)"
            ),
        )

    @property
    def healthy(self) -> bool:
        """Connected to the broker and consuming, with no worker stuck: none holds
        deliveries without settling any for ``stall_timeout`` (what ``/healthz`` reports)."""
        running = self._running
        return self._connected and self.transport.connected and running.healthy(self.settings)

    def partitions_held(self, service: str) -> tuple[int, ...]:
        """The partitions of a partitioned ``service`` this process has taken (its share)."""
        return self._running.partitions_held(service)

    def in_flight_of(self, service: str) -> int:
        """Deliveries of ``service`` being handled right now."""
        return self._running.in_flight_of(service)

    @property
    def in_flight(self) -> int:
        """Deliveries being handled (or waiting for a concurrency slot) right now."""
        return self._running.in_flight

    @property
    def running(self) -> tuple[str, ...]:
        """Names of the services this bus consumes for."""
        return self._running.names

    def _check_connected(self) -> None:
        if not self._connected:
            raise ChoreoError(
                "the bus is not connected: use `async with connect(...) as bus` "
                "or `bus = await connect(...)`"
            )


def _relayed(result: object) -> BaseException | None:
    """A relayed row is done unless its publish failed: an event no queue is bound to was
    confirmed and dropped (``on_unroutable="raise"`` has nobody to raise to here), and
    retrying it would hold back every row staged after it."""
    if isinstance(result, Unroutable):
        log.warning("outbox: %s; the row is marked sent", result)
        return None
    return result if isinstance(result, BaseException) else None
