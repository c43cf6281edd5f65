"""The one small interface every transport implements.

A transport knows nothing of events, services or handlers. It declares durable exchanges
(fanout for events, direct for requests, topic for the delay levels), binds exchanges to
exchanges, declares durable queues (and unbinds them), publishes
a :class:`Message` and returns once the broker has confirmed it, hands each incoming
:class:`Delivery` to a callback, and sends a request and waits for the reply that names
it. Everything else (encoding, dispatch, retries, dead letters) lives above it and is
shared by all transports.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DIRECT",
    "FANOUT",
    "TOPIC",
    "Consumer",
    "Delivery",
    "Message",
    "OnCancelled",
    "OnMessage",
    "QueueSpec",
    "Transport",
]

FANOUT = "fanout"
DIRECT = "direct"
TOPIC = "topic"  # routing keys of dot-separated words; bindings match them with * and #


@dataclass(slots=True)
class Message:
    """A message as it travels: body and the AMQP properties choreo uses."""

    body: bytes
    message_id: str | None = None
    type: str | None = None
    correlation_id: str | None = None
    content_type: str | None = None
    timestamp: int | None = None  # seconds since the epoch, as AMQP carries it
    headers: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    expiration: float | None = None  # seconds the broker keeps it before dropping it
    persistent: bool = True
    undecodable: str | None = None  # why the transport could not decode it all (foreign input)


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable queue and its bindings: (exchange, routing key) pairs (the key is ignored
    by fanout exchanges)."""

    name: str
    bindings: tuple[tuple[str, str], ...] = ()
    arguments: tuple[tuple[str, Any], ...] = ()


class Delivery(abc.ABC):
    """A message handed to a consumer; it must be settled with ``ack`` or ``reject`` once."""

    __slots__ = ("exchange", "message", "redelivered", "routing_key")

    def __init__(self, message: Message, exchange: str, routing_key: str, redelivered: bool):
        self.message = message
        self.exchange = exchange
        self.routing_key = routing_key
        self.redelivered = redelivered

    @abc.abstractmethod
    async def ack(self) -> None:
        """The message was handled; the broker may forget it."""

    @abc.abstractmethod
    async def reject(self, requeue: bool) -> None:
        """Give the message back to its queue (``requeue=True``) or drop it."""


OnMessage = Callable[[Delivery], Coroutine[Any, Any, None]]
OnCancelled = Callable[[], Coroutine[Any, Any, None]]


class Consumer(abc.ABC):
    """A running subscription to one queue."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop receiving new deliveries; deliveries already handed over may still settle."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Cancel, and give every delivery not yet settled back to the queue."""

    @abc.abstractmethod
    async def pause(self) -> None:
        """Stop receiving new deliveries for now; those handed over still settle."""

    @abc.abstractmethod
    async def resume(self) -> None:
        """Receive deliveries again after :meth:`pause`."""


class Transport(abc.ABC):
    """A connection to a broker."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise ``ConnectionFailed`` when the broker cannot be reached."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection and everything opened on it."""

    @abc.abstractmethod
    async def declare_exchange(self, name: str, kind: str = FANOUT) -> None:
        """Declare a durable exchange, ``FANOUT``, ``DIRECT`` or ``TOPIC`` (idempotent)."""

    @abc.abstractmethod
    async def exchange_exists(self, name: str) -> bool:
        """Whether the exchange ``name`` exists on the broker (AMQP passive declare): it
        declares nothing. The default exchange ``""`` always exists."""

    @abc.abstractmethod
    async def bind_exchange(self, destination: str, source: str, routing_key: str = "") -> None:
        """Bind exchange ``destination`` to exchange ``source`` (AMQP ``exchange.bind``):
        what ``source`` routes with ``routing_key`` goes on through ``destination``, and a
        queue reached by several paths gets one copy. Durable, idempotent;
        ``ConfigurationError`` when either exchange does not exist. A delivery names the
        exchange the message was published (or dead-lettered) to, not the last one."""

    @abc.abstractmethod
    async def declare_queue(self, spec: QueueSpec) -> None:
        """Declare a durable queue and bind it to its exchanges (idempotent)."""

    @abc.abstractmethod
    async def unbind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        """Remove the binding of ``queue`` to ``exchange`` with ``routing_key`` (AMQP
        ``queue.unbind``); no error when there is no such binding or exchange,
        ``ConfigurationError`` when there is no such queue. A reconnect does not bind it
        again, even when it was declared through this transport."""

    @abc.abstractmethod
    async def publish(
        self, message: Message, exchange: str, routing_key: str = "", *, mandatory: bool = False
    ) -> None:
        """Publish; return once the broker confirmed, else raise ``PublishError``.

        ``mandatory``: raise ``Unroutable`` when no queue is bound for the message. The
        default exchange (``""``) routes to the queue, or the reply address, named by the key.
        """

    @abc.abstractmethod
    async def consume(
        self,
        queue: str,
        on_message: OnMessage,
        prefetch: int,
        on_cancelled: OnCancelled | None = None,
    ) -> Consumer:
        """Deliver messages of ``queue`` to ``on_message``, at most ``prefetch`` unsettled.

        When the broker ends the subscription (the queue was deleted), the consumer is left
        paused and ``on_cancelled`` runs in a task of its own: it may restore the queue and
        call ``resume()``."""

    @abc.abstractmethod
    async def request(
        self, message: Message, exchange: str, routing_key: str, timeout: float
    ) -> Message:
        """Publish ``message`` with a reply address, mandatory and expiring after ``timeout``;
        return the reply whose ``correlation_id`` is the request's ``message_id``.

        Raises ``NoResponder`` when no queue is bound for it and ``RequestTimeout`` when
        no reply came in time. Many requests may be in flight at once.
        """

    @property
    def connected(self) -> bool:
        """Whether the connection to the broker is up right now (for health checks)."""
        return True

    @property
    @abc.abstractmethod
    def pending_requests(self) -> int:
        """Requests waiting for their reply (for tests and health checks)."""

    @abc.abstractmethod
    async def queue_size(self, queue: str) -> int:
        """Messages ready in ``queue``; ``ConfigurationError`` when there is no such queue."""

    @abc.abstractmethod
    async def consumer_count(self, queue: str) -> int:
        """Consumers subscribed to ``queue``, the standbys of a single-active-consumer queue
        included; ``ConfigurationError`` when there is no such queue."""

    @abc.abstractmethod
    def fetch(self, queue: str, limit: int) -> AbstractAsyncContextManager[list[Delivery]]:
        """Take up to ``limit`` ready messages of ``queue`` without a consumer (``async with``).

        Settle the ones to keep or drop; the others go back to the queue when the block ends.
        """

    @abc.abstractmethod
    async def purge(self, queue: str) -> int:
        """Drop every ready message of ``queue``; return how many there were."""

    @abc.abstractmethod
    async def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` and what it holds (its consumers are cancelled); no error when
        there is no such queue."""
