"""In-memory transport (``memory://`` or ``memory://NAME``), with RabbitMQ's semantics.

Brokers live for the whole process, one per name, so a queue keeps its messages while no
service consumes it, exactly like a durable queue on RabbitMQ. A fanout exchange copies a
message into every bound queue, a direct exchange into the queues bound with its routing
key, a topic exchange into those whose binding key matches it (``*`` one word, ``#`` any
number); exchanges bound to exchanges route on, each queue getting one copy. A message no
queue takes is dropped, or refused when it is mandatory. A consumer gets at most
``prefetch`` unsettled messages; when it is closed, its unsettled messages go back to the
head of the queue, flagged as redelivered. A message whose expiration has passed is dropped
instead of delivered. Replies go to a per-connection reply address, as with RabbitMQ's
direct reply-to. Publishing to an exchange that was never declared fails, as it does on
RabbitMQ. A queue's dead-letter arguments apply as on RabbitMQ: a message that expires, is
rejected without requeue, or (quorum) comes back more than ``x-delivery-limit`` times goes
to the dead-letter exchange with an ``x-death`` header, except into a queue it already died
in with no rejection since (RabbitMQ's cycle check). The ``CC`` and ``BCC`` headers add
routing keys (sender-selected distribution: ``BCC`` is not delivered), which the message
keeps when dead-lettered unless the queue sets the dead-letter routing key. Unlike
RabbitMQ over AMQP, it lists a queue's bindings (:meth:`MemoryTransport.bindings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

from ...errors import ConfigurationError, ConnectionFailed, NoResponder, RequestTimeout, Unroutable
from ..base import (
    FANOUT,
    Consumer,
    Delivery,
    Message,
    OnCancelled,
    OnMessage,
    QueueSpec,
    Transport,
)
from ._broker import MemoryBroker, MemoryConsumer, Queue

__all__ = ["MemoryBroker", "MemoryTransport", "broker", "exists", "forget", "reset"]

_brokers: dict[str, MemoryBroker] = {}


def broker(name: str = "") -> MemoryBroker:
    """The process-wide in-memory broker called ``name`` (created on first use)."""
    found = _brokers.get(name)
    if found is None:
        found = _brokers[name] = MemoryBroker()
    return found


def reset() -> None:
    """Forget every in-memory broker (for test suites)."""
    _brokers.clear()


def forget(name: str) -> None:
    """Forget the in-memory broker called ``name`` and everything it holds."""
    _brokers.pop(name, None)


def exists(name: str) -> bool:
    """Whether an in-memory broker called ``name`` is alive."""
    return name in _brokers


async def _never(delivery: Delivery) -> None:
    raise AssertionError("fetched messages are never delivered to a callback")


class MemoryTransport(Transport):
    """Transport over a process-wide :class:`MemoryBroker`."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._broker: MemoryBroker | None = None
        self._consumers: list[MemoryConsumer] = []
        self._reply_address = f"memory.reply-to.{uuid.uuid4().hex}"
        self._pending: dict[str, asyncio.Future[Message]] = {}

    @property
    def broker(self) -> MemoryBroker:
        if self._broker is None:
            raise ConnectionFailed("the in-memory transport is not connected")
        return self._broker

    @property
    def connected(self) -> bool:
        return self._broker is not None

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    async def connect(self) -> None:
        self._broker = broker(self.name)
        self._broker.reply_addresses[self._reply_address] = self._on_reply

    async def close(self) -> None:
        for consumer in self._consumers:
            await consumer.close()
        self._consumers.clear()
        if self._broker is not None:
            self._broker.reply_addresses.pop(self._reply_address, None)
        self._broker = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionFailed("the bus was closed"))

    async def declare_exchange(self, name: str, kind: str = FANOUT) -> None:
        self.broker.declare_exchange(name, kind)

    async def exchange_exists(self, name: str) -> bool:
        return name == "" or name in self.broker.exchanges

    async def bind_exchange(self, destination: str, source: str, routing_key: str = "") -> None:
        self.broker.bind_exchange(destination, source, routing_key)

    async def declare_queue(self, spec: QueueSpec) -> None:
        self.broker.declare_queue(spec)

    async def unbind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        self._queue(queue)
        self.broker.unbind(queue, exchange, routing_key)

    async def bindings(self, queue: str) -> list[tuple[str, str]]:
        """``queue``'s bindings as (exchange, routing key), which AMQP cannot list (RabbitMQ
        needs its management API or rabbitmqctl); ``ConfigurationError`` when there is no
        such queue."""
        self._queue(queue)
        return self.broker.bindings(queue)

    async def publish(
        self, message: Message, exchange: str, routing_key: str = "", *, mandatory: bool = False
    ) -> None:
        self.broker.publish(message, exchange, routing_key, mandatory)

    async def request(
        self, message: Message, exchange: str, routing_key: str, timeout: float
    ) -> Message:
        key = message.message_id or ""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        outgoing = dataclasses.replace(
            message, reply_to=self._reply_address, expiration=timeout, persistent=False
        )
        try:
            try:
                self.broker.publish(outgoing, exchange, routing_key, True)
            except Unroutable as exc:
                raise NoResponder(str(exc)) from exc
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise RequestTimeout(f"no reply within {timeout}s") from None
        finally:
            self._pending.pop(key, None)

    def _on_reply(self, message: Message) -> None:
        future = self._pending.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message)

    def _queue(self, queue: str) -> Queue:
        found = self.broker.queues.get(queue)
        if found is None:
            raise ConfigurationError(f"no queue {queue!r} on the in-memory broker")
        return found

    async def queue_size(self, queue: str) -> int:
        return len(self._queue(queue).messages)

    async def consumer_count(self, queue: str) -> int:
        return len(self._queue(queue).consumers)

    @contextlib.asynccontextmanager
    async def fetch(self, queue: str, limit: int) -> AsyncIterator[list[Delivery]]:
        found = self._queue(queue)
        holder = MemoryConsumer(found, _never, limit)
        deliveries: list[Delivery] = []
        now = time.monotonic()
        while found.messages and len(deliveries) < limit:
            item = found.messages.popleft()
            if item.deadline is None or item.deadline >= now:
                deliveries.append(holder.hold(item))
        try:
            yield deliveries
        finally:
            await holder.close()

    async def delete_queue(self, queue: str) -> None:
        self.broker.delete_queue(queue)

    async def purge(self, queue: str) -> int:
        found = self._queue(queue)
        count = len(found.messages)
        found.messages.clear()
        return count

    async def consume(
        self,
        queue: str,
        on_message: OnMessage,
        prefetch: int,
        on_cancelled: OnCancelled | None = None,
    ) -> Consumer:
        found = self._queue(queue)
        consumer = MemoryConsumer(found, on_message, prefetch, on_cancelled)
        found.consumers.append(consumer)
        self._consumers.append(consumer)
        found.dispatch()
        return consumer
