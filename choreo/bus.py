"""``connect()`` and the ``Bus``: publish events, start and stop consuming, run a worker.

::

    async with connect("amqp://guest:guest@localhost:5672/") as bus:
        await bus.publish(SkuProcessed(sku="A1"))      # returns once the broker confirmed
        await bus.start(catalog, inventory)            # declares topology, consumes
        ...
        await bus.stop()                               # graceful
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Generator, Mapping
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import ValidationError

from . import config, topology, tracing
from .consumer import QueueWorker, ServiceConsumer
from .errors import (
    ChoreoError,
    ConfigurationError,
    InvalidReply,
    NoResponder,
    RemoteError,
    RequestTimeout,
    Unroutable,
)
from .events import Event, encode, event_name_of
from .observe import Observer
from .responder import ERROR_TYPE, Responder
from .retry import DEFAULT_RETRY, Retry
from .service import Service
from .transports.base import DIRECT, FANOUT, Consumer, Transport

__all__ = ["Bus", "connect"]

log = logging.getLogger("choreo")

DEFAULT_PREFETCH = 64
DEFAULT_CONCURRENCY = 32
DEFAULT_REQUEST_TIMEOUT = 5.0
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

R = TypeVar("R", bound=Event)


def connect(
    url: str | None = None,
    *,
    namespace: str | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    concurrency: int = DEFAULT_CONCURRENCY,
    retry: Retry = DEFAULT_RETRY,
    shutdown_timeout: float = 30.0,
    queue_type: str = "classic",
    on_unroutable: str = "warn",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    publish_timeout: float = 30.0,
    connection_name: str | None = None,
    observer: Observer | None = None,
) -> Bus:
    """A bus for the broker at ``url``: ``amqp://...``, ``amqps://...`` or ``memory://[NAME]``.

    ``url=None`` reads ``CHOREO_BROKER_URL`` (default ``amqp://guest:guest@localhost:5672/``);
    ``namespace=None`` reads ``CHOREO_NAMESPACE``. Use it as ``async with connect() as bus``
    or ``bus = await connect()``; nothing touches the network before that.

    Several comma-separated ``amqp://`` URLs name the nodes of a cluster: each reconnect
    tries the next one. ``prefetch``, ``concurrency``, ``retry`` and ``queue_type``
    (``"classic"`` or ``"quorum"``) are defaults for services that do not set their own.
    ``on_unroutable``: ``"warn"`` logs, ``"raise"`` raises ``Unroutable`` when an event is
    published to an exchange no queue is bound to. ``observer`` (default: one log line per
    handled message) is told of every handled message and publish. A consumed body over
    ``max_message_size`` bytes is dead-lettered. ``publish_timeout``: how long a publish may
    wait for its confirm, reconnections included, before ``PublishError``.
    """
    url = config.broker_url(url)
    return Bus(
        _transport_for(url, connection_name or f"choreo pid={os.getpid()}", publish_timeout),
        url=url,
        namespace=config.namespace(namespace),
        prefetch=prefetch,
        concurrency=concurrency,
        retry=retry,
        shutdown_timeout=shutdown_timeout,
        queue_type=queue_type,
        on_unroutable=on_unroutable,
        max_message_size=max_message_size,
        observer=observer,
    )


def _transport_for(url: str, connection_name: str, publish_timeout: float) -> Transport:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"invalid broker URL {config.redact(url)}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme == "memory":
        from .transports.memory import MemoryTransport

        return MemoryTransport(parts.netloc + parts.path.rstrip("/"))
    if scheme in ("amqp", "amqps"):
        if not parts.hostname:
            raise ConfigurationError(f"invalid broker URL {config.redact(url)}: no host")
        from .transports.rabbitmq import RabbitMQTransport

        return RabbitMQTransport(
            url, connection_name=connection_name, publish_timeout=publish_timeout
        )
    raise ConfigurationError(
        f"unsupported broker URL {config.redact(url)!r}: use amqp://, amqps:// or memory://"
    )


class _Running:
    __slots__ = ("consumer", "subscription")

    def __init__(self, consumer: QueueWorker, subscription: Consumer) -> None:
        self.consumer = consumer
        self.subscription = subscription


class Bus:
    """A connection to the broker, shared by publishers and the services it runs."""

    def __init__(
        self,
        transport: Transport,
        *,
        url: str,
        namespace: str = "",
        prefetch: int = DEFAULT_PREFETCH,
        concurrency: int = DEFAULT_CONCURRENCY,
        retry: Retry = DEFAULT_RETRY,
        shutdown_timeout: float = 30.0,
        queue_type: str = "classic",
        on_unroutable: str = "warn",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        observer: Observer | None = None,
    ) -> None:
        for option, value in (
            ("prefetch", prefetch),
            ("concurrency", concurrency),
            ("max_message_size", max_message_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"connect(): {option} must be a positive int")
        if queue_type not in topology.QUEUE_TYPES:
            raise ConfigurationError(f"connect(): queue_type must be one of {topology.QUEUE_TYPES}")
        if on_unroutable not in ("warn", "raise"):
            raise ConfigurationError("connect(): on_unroutable must be 'warn' or 'raise'")
        if not isinstance(retry, Retry):
            raise ConfigurationError("connect(): retry must be a choreo.Retry")
        self.transport = transport
        self.url = url
        self.namespace = namespace
        self.prefetch = prefetch
        self.concurrency = concurrency
        self.retry = retry
        self.shutdown_timeout = shutdown_timeout
        self.queue_type = queue_type
        self.on_unroutable = on_unroutable
        self.max_message_size = max_message_size
        self.observer = observer or Observer()
        self.declared_exchanges: set[str] = set()
        self.declared_queues: set[str] = set()
        self._exchanges_ready: dict[str, asyncio.Future[None]] = {}
        self._running: dict[str, list[_Running]] = {}
        self._connected = False

    def __repr__(self) -> str:
        return f"Bus({config.redact(self.url)!r}, namespace={self.namespace!r})"

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> Bus:
        """Connect to the broker (``ConnectionFailed`` if it cannot be reached)."""
        if not self._connected:
            await self.transport.connect()
            self._connected = True
        return self

    async def close(self) -> None:
        """Stop consuming (gracefully) and close the connection."""
        try:
            await self.stop()
        finally:
            self._connected = False
            self._exchanges_ready.clear()
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
    ) -> str:
        """Publish ``event`` to its exchange; return its message id once the broker confirmed.

        Safe to call concurrently: publishes are pipelined on one confirm channel.
        """
        self._check_connected()
        message = encode(
            event, correlation_id=correlation_id, causation_id=causation_id, headers=headers
        )
        if tracing.ENABLED:
            tracing.inject(message.headers)
        exchange = topology.exchange_name(self.namespace, type(event).__event_name__)
        if exchange not in self.declared_exchanges:
            await self._ensure_exchange(exchange, FANOUT)
        started = time.perf_counter()
        try:
            await self.transport.publish(message, exchange, mandatory=True)
            self.observer.published(type(event).__event_name__, time.perf_counter() - started)
        except Unroutable:
            if self.on_unroutable == "raise":
                raise Unroutable(
                    f"no queue is bound to {exchange!r}: nobody consumes {message.type!r} yet "
                    "(start the consumers, or run `choreo topology --apply`, first)"
                ) from None
            log.warning(
                "event %r was published to %r, which no queue is bound to: it was dropped. "
                "Start the consumers (or run `choreo topology --apply`) before publishing.",
                message.type,
                exchange,
            )
        return message.message_id  # type: ignore[return-value]  # encode always sets it

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
        reply_name = event_name_of(reply_type)
        if timeout <= 0:
            raise ConfigurationError(f"request timeout must be positive, got {timeout}")
        message = encode(
            request, correlation_id=correlation_id, causation_id=causation_id, headers=headers
        )
        if tracing.ENABLED:
            tracing.inject(message.headers)
        name = type(request).__event_name__
        exchange = topology.requests_exchange_name(self.namespace)
        if exchange not in self.declared_exchanges:
            await self._ensure_exchange(exchange, DIRECT)
        try:
            reply = await self.transport.request(message, exchange, name, timeout)
        except NoResponder:
            where = f" in namespace {self.namespace!r}" if self.namespace else ""
            raise NoResponder(f"no service responds to {name!r}{where}") from None
        except RequestTimeout:
            raise RequestTimeout(f"request {name!r} got no reply within {timeout}s") from None
        if reply.type == ERROR_TYPE:
            headers_ = reply.headers
            raise RemoteError(
                str(headers_.get("x-choreo-error-type", "Error")),
                str(headers_.get("x-choreo-error-message", "")),
                str(headers_.get("x-choreo-service", "")),
            )
        if reply.type is not None and reply.type != reply_name:
            raise InvalidReply(
                f"request {name!r} expected a {reply_name!r} reply, got {reply.type!r}"
            )
        try:
            return reply_type.model_validate_json(reply.body)
        except ValidationError as exc:
            raise InvalidReply(
                f"reply to {name!r} is not a valid {reply_type.__name__}: {exc}"
            ) from None

    async def _ensure_exchange(self, exchange: str, kind: str) -> None:
        """Declare ``exchange`` once, even when many publishes need it at the same time."""
        ready = self._exchanges_ready.get(exchange)
        if ready is None:
            ready = self._exchanges_ready[exchange] = asyncio.ensure_future(
                self.transport.declare_exchange(exchange, kind)
            )
        try:
            await asyncio.shield(ready)
        except BaseException:
            if ready.done() and self._exchanges_ready.get(exchange) is ready:
                del self._exchanges_ready[exchange]
            raise
        self.declared_exchanges.add(exchange)

    # -- consuming ---------------------------------------------------------------------

    async def start(self, *services: Service) -> None:
        """Declare the services' exchanges and queues, then consume; return once consuming."""
        for service in services:
            if isinstance(service, Service) and service.name in self._running:
                raise ConfigurationError(f"service {service.name!r} is started twice")
        await self.declare(*services)
        for service in services:
            self._running[service.name] = []
            try:
                await self._start_one(service)
            except BaseException:
                await self.stop()
                raise

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
        plan = topology.plan(services, self.namespace, retry=self.retry, queue_type=self.queue_type)
        for exchange, kind in plan.exchanges:
            await self._ensure_exchange(exchange, kind)
        for queue in plan.queues:
            await self.transport.declare_queue(queue)
            self.declared_queues.add(queue.name)
        log.info(
            "declared exchanges %s and queues %s",
            ", ".join(name for name, _ in plan.exchanges),
            ", ".join(q.name for q in plan.queues),
        )
        return plan

    async def _start_one(self, service: Service) -> None:
        prefetch = service.prefetch or self.prefetch
        concurrency = service.concurrency or self.concurrency
        dlq = topology.dlq_name(self.namespace, service.name)
        workers: list[QueueWorker] = []
        if service.handlers:
            exchanges = {
                topology.exchange_name(self.namespace, name): handler
                for name, handler in service.handlers.items()
            }
            workers.append(
                ServiceConsumer(
                    self,
                    service,
                    queue=topology.queue_name(self.namespace, service.name),
                    dlq=dlq,
                    exchanges=exchanges,
                    concurrency=concurrency,
                    retry=service.retry or self.retry,
                    queue_type=service.queue_type or self.queue_type,
                )
            )
        if service.responders:
            workers.append(
                Responder(
                    self,
                    service,
                    queue=topology.requests_queue_name(self.namespace, service.name),
                    dlq=dlq,
                    concurrency=concurrency,
                )
            )
        for worker in workers:
            subscription = await self.transport.consume(worker.queue, worker.on_message, prefetch)
            self._running[service.name].append(_Running(worker, subscription))
            log.info("service %s consuming %s (prefetch %d)", service.name, worker.queue, prefetch)

    async def stop(self, timeout: float | None = None) -> None:
        """Stop consuming, let handlers in flight finish (up to ``timeout`` s), then settle."""
        running, self._running = self._running, {}
        if not running:
            return
        timeout = self.shutdown_timeout if timeout is None else timeout
        items = [item for items in running.values() for item in items]
        for item in items:
            await item.subscription.cancel()
        results = await asyncio.gather(*(item.consumer.drain(timeout) for item in items))
        for item in items:
            await item.subscription.close()
        log.info(
            "stopped %s%s",
            ", ".join(running),
            "" if all(results) else " (some handlers were cancelled)",
        )

    async def run(self, *services: Service) -> None:
        """Start ``services`` and consume until cancelled or sent SIGINT/SIGTERM; then stop."""
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, stopped.set)
                installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        try:
            await self.start(*services)
            await stopped.wait()
            log.info("stop requested, finishing handlers in flight")
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await asyncio.shield(self.stop())

    @property
    def healthy(self) -> bool:
        """Connected to the broker and consuming (what ``/healthz`` reports)."""
        return self._connected and bool(self._running) and self.transport.connected

    def in_flight_of(self, service: str) -> int:
        """Deliveries of ``service`` being handled right now."""
        return sum(len(item.consumer.tasks) for item in self._running.get(service, ()))

    @property
    def in_flight(self) -> int:
        """Deliveries being handled (or waiting for a concurrency slot) right now."""
        return sum(len(item.consumer.tasks) for items in self._running.values() for item in items)

    @property
    def running(self) -> tuple[str, ...]:
        """Names of the services this bus consumes for."""
        return tuple(self._running)

    def _check_connected(self) -> None:
        if not self._connected:
            raise ChoreoError(
                "the bus is not connected: use `async with connect(...) as bus` "
                "or `bus = await connect(...)`"
            )
