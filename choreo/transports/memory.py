"""In-memory transport (``memory://`` or ``memory://NAME``), with RabbitMQ's semantics.

Brokers live for the whole process, one per name, so a queue keeps its messages while no
service consumes it, exactly like a durable queue on RabbitMQ. Each exchange is a fanout:
a message is copied into every bound queue, and dropped when none is bound. A consumer
gets at most ``prefetch`` unsettled messages; when it is closed, its unsettled messages
go back to the head of the queue, flagged as redelivered. Publishing to an exchange that
was never declared fails, as it does on RabbitMQ.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import deque

from ..errors import ConfigurationError, PublishError
from .base import Consumer, Delivery, Message, OnMessage, QueueSpec, Transport

__all__ = ["MemoryBroker", "MemoryTransport", "broker", "reset"]

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


class _Queue:
    __slots__ = ("_turn", "consumers", "messages", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages: deque[tuple[Message, str, str, bool]] = deque()
        self.consumers: list[_MemoryConsumer] = []
        self._turn = itertools.count()

    def put(self, item: tuple[Message, str, str, bool], *, front: bool = False) -> None:
        if front:
            self.messages.appendleft(item)
        else:
            self.messages.append(item)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand messages to consumers with room, round-robin, as RabbitMQ does."""
        while self.messages:
            ready = [c for c in self.consumers if len(c.unsettled) < c.prefetch]
            if not ready:
                return
            consumer = ready[next(self._turn) % len(ready)]
            consumer.deliver(*self.messages.popleft())


class MemoryBroker:
    """Exchanges, bindings and queues of one in-memory broker."""

    def __init__(self) -> None:
        self.exchanges: dict[str, set[str]] = {}
        self.queues: dict[str, _Queue] = {}

    def declare_exchange(self, name: str) -> None:
        self.exchanges.setdefault(name, set())

    def declare_queue(self, spec: QueueSpec) -> None:
        if spec.name not in self.queues:
            self.queues[spec.name] = _Queue(spec.name)
        for exchange in spec.bindings:
            if exchange not in self.exchanges:
                raise ConfigurationError(f"cannot bind {spec.name!r}: no exchange {exchange!r}")
            self.exchanges[exchange].add(spec.name)

    def publish(self, message: Message, exchange: str, routing_key: str) -> None:
        if exchange == "":  # the default exchange routes to the queue named by the key
            targets = [routing_key] if routing_key in self.queues else []
        elif exchange in self.exchanges:
            targets = sorted(self.exchanges[exchange])
        else:
            raise PublishError(f"no exchange {exchange!r} on the in-memory broker")
        for name in targets:
            copy = dataclasses.replace(message, headers=dict(message.headers))
            self.queues[name].put((copy, exchange, routing_key, False))

    def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting those handed to a consumer)."""
        return len(self.queues[queue].messages)

    def unsettled(self, queue: str) -> int:
        """Messages of ``queue`` handed to a consumer and not yet settled."""
        return sum(len(c.unsettled) for c in self.queues[queue].consumers)


class _MemoryDelivery(Delivery):
    __slots__ = ("_consumer", "_key")

    def __init__(self, consumer: _MemoryConsumer, key: int, item: tuple[Message, str, str, bool]):
        super().__init__(*item)
        self._consumer = consumer
        self._key = key

    async def ack(self) -> None:
        self._consumer.settle(self._key, requeue=False)

    async def reject(self, requeue: bool) -> None:
        self._consumer.settle(self._key, requeue=requeue)


class _MemoryConsumer(Consumer):
    def __init__(self, queue: _Queue, on_message: OnMessage, prefetch: int) -> None:
        self.queue = queue
        self.on_message = on_message
        self.prefetch = prefetch
        self.unsettled: dict[int, tuple[Message, str, str, bool]] = {}
        self._keys = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    def deliver(self, message: Message, exchange: str, routing_key: str, redelivered: bool) -> None:
        key = next(self._keys)
        item = (message, exchange, routing_key, redelivered)
        self.unsettled[key] = item
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self.on_message(_MemoryDelivery(self, key, item))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def settle(self, key: int, *, requeue: bool) -> None:
        item = self.unsettled.pop(key, None)
        if item is None:  # already settled, or given back when the consumer closed
            return
        if requeue:
            message, exchange, routing_key, _ = item
            self.queue.put((message, exchange, routing_key, True), front=True)
        else:
            self.queue.dispatch()

    async def cancel(self) -> None:
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)

    async def close(self) -> None:
        await self.cancel()
        for key in sorted(self.unsettled, reverse=True):
            self.settle(key, requeue=True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class MemoryTransport(Transport):
    """Transport over a process-wide :class:`MemoryBroker`."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._broker: MemoryBroker | None = None
        self._consumers: list[_MemoryConsumer] = []

    @property
    def broker(self) -> MemoryBroker:
        if self._broker is None:
            raise PublishError("the in-memory transport is not connected")
        return self._broker

    async def connect(self) -> None:
        self._broker = broker(self.name)

    async def close(self) -> None:
        for consumer in self._consumers:
            await consumer.close()
        self._consumers.clear()
        self._broker = None

    async def declare_exchange(self, name: str) -> None:
        self.broker.declare_exchange(name)

    async def declare_queue(self, spec: QueueSpec) -> None:
        self.broker.declare_queue(spec)

    async def publish(self, message: Message, exchange: str, routing_key: str = "") -> None:
        self.broker.publish(message, exchange, routing_key)

    async def consume(self, queue: str, on_message: OnMessage, prefetch: int) -> Consumer:
        found = self.broker.queues.get(queue)
        if found is None:
            raise ConfigurationError(f"cannot consume {queue!r}: no such queue")
        consumer = _MemoryConsumer(found, on_message, prefetch)
        found.consumers.append(consumer)
        self._consumers.append(consumer)
        found.dispatch()
        return consumer
