"""In-memory transport (``memory://`` or ``memory://NAME``), with RabbitMQ's semantics.

Brokers live for the whole process, one per name, so a queue keeps its messages while no
service consumes it, exactly like a durable queue on RabbitMQ. A fanout exchange copies a
message into every bound queue, a direct exchange into the queues bound with its routing
key; a message no queue takes is dropped, or refused when it is mandatory. A consumer
gets at most ``prefetch`` unsettled messages; when it is closed, its unsettled messages go
back to the head of the queue, flagged as redelivered. A message whose expiration has
passed is dropped instead of delivered. Replies go to a per-connection reply address, as
with RabbitMQ's direct reply-to. Publishing to an exchange that was never declared fails,
as it does on RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable

from ..errors import (
    ConfigurationError,
    ConnectionFailed,
    NoResponder,
    PublishError,
    RequestTimeout,
    Unroutable,
)
from .base import (
    DIRECT,
    FANOUT,
    Consumer,
    Delivery,
    Message,
    OnMessage,
    QueueSpec,
    Transport,
)

__all__ = ["MemoryBroker", "MemoryTransport", "broker", "exists", "forget", "reset"]

_brokers: dict[str, MemoryBroker] = {}

# message, exchange, routing key, redelivered, deadline (monotonic seconds or None)
_Item = tuple[Message, str, str, bool, float | None]


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


class _Queue:
    __slots__ = ("_broker", "_turn", "consumers", "dead_letter_to", "messages", "name", "ttl")

    def __init__(self, name: str, broker: MemoryBroker, arguments: dict[str, object]) -> None:
        self.name = name
        self.messages: deque[_Item] = deque()
        self.consumers: list[_MemoryConsumer] = []
        self._turn = itertools.count()
        self._broker = broker
        ttl = arguments.get("x-message-ttl")
        self.ttl = ttl / 1000 if isinstance(ttl, int) else None
        exchange = arguments.get("x-dead-letter-exchange")
        key = arguments.get("x-dead-letter-routing-key")
        self.dead_letter_to = (
            (str(exchange), None if key is None else str(key)) if exchange is not None else None
        )

    def put(self, item: _Item, *, front: bool = False) -> None:
        if front:
            self.messages.appendleft(item)
        else:
            self.messages.append(item)
            if self.ttl is not None:
                asyncio.get_running_loop().call_later(self.ttl, self._expire, item)
        self.dispatch()

    def _expire(self, item: _Item) -> None:
        """The queue's TTL has passed: drop the message, or dead-letter it as RabbitMQ does."""
        for index, waiting in enumerate(self.messages):
            if waiting is item:
                del self.messages[index]
                break
        else:
            return  # consumed or purged meanwhile
        if self.dead_letter_to is not None:
            exchange, key = self.dead_letter_to
            message, _, routing_key, _, _ = item
            self._broker.publish(message, exchange, routing_key if key is None else key, False)

    def dispatch(self) -> None:
        """Hand messages to consumers with room, round-robin, as RabbitMQ does."""
        while self.messages:
            ready = [c for c in self.consumers if len(c.unsettled) < c.prefetch]
            if not ready:
                return
            item = self.messages.popleft()
            deadline = item[4]
            if deadline is not None and deadline < time.monotonic():
                continue  # expired while waiting: RabbitMQ drops it at the head of the queue
            ready[next(self._turn) % len(ready)].deliver(item)


@dataclasses.dataclass(slots=True)
class _Exchange:
    kind: str
    bindings: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # (queue, key)


class MemoryBroker:
    """Exchanges, bindings, queues and reply addresses of one in-memory broker."""

    def __init__(self) -> None:
        self.exchanges: dict[str, _Exchange] = {}
        self.queues: dict[str, _Queue] = {}
        self.reply_addresses: dict[str, Callable[[Message], None]] = {}

    def declare_exchange(self, name: str, kind: str) -> None:
        found = self.exchanges.get(name)
        if found is None:
            self.exchanges[name] = _Exchange(kind)
        elif found.kind != kind:
            raise ConfigurationError(f"exchange {name!r} exists with other settings ({found.kind})")

    def declare_queue(self, spec: QueueSpec) -> None:
        if spec.name not in self.queues:
            self.queues[spec.name] = _Queue(spec.name, self, dict(spec.arguments))
        for exchange, key in spec.bindings:
            if exchange not in self.exchanges:
                raise ConfigurationError(f"cannot bind {spec.name!r}: no exchange {exchange!r}")
            self.exchanges[exchange].bindings.add((spec.name, key))

    def publish(self, message: Message, exchange: str, routing_key: str, mandatory: bool) -> None:
        if exchange == "":  # the default exchange: a queue, or a reply address, by name
            reply = self.reply_addresses.get(routing_key)
            if reply is not None:
                reply(message)
                return
            targets = [routing_key] if routing_key in self.queues else []
        elif exchange in self.exchanges:
            found = self.exchanges[exchange]
            targets = sorted(
                queue
                for queue, key in found.bindings
                if found.kind == FANOUT or (found.kind == DIRECT and key == routing_key)
            )
        else:
            raise PublishError(f"no exchange {exchange!r} on the in-memory broker")
        if not targets and mandatory:
            raise Unroutable(f"no queue is bound for {routing_key or exchange!r}")
        deadline = None if message.expiration is None else time.monotonic() + message.expiration
        for name in targets:
            copy = dataclasses.replace(message, headers=dict(message.headers))
            self.queues[name].put((copy, exchange, routing_key, False, deadline))

    def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting those handed to a consumer)."""
        return len(self.queues[queue].messages)

    def unsettled(self, queue: str) -> int:
        """Messages of ``queue`` handed to a consumer and not yet settled."""
        return sum(len(c.unsettled) for c in self.queues[queue].consumers)


class _MemoryDelivery(Delivery):
    __slots__ = ("_consumer", "_key")

    def __init__(self, consumer: _MemoryConsumer, key: int, item: _Item) -> None:
        super().__init__(item[0], item[1], item[2], item[3])
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
        self.unsettled: dict[int, _Item] = {}
        self._keys = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    def hold(self, item: _Item) -> _MemoryDelivery:
        """Hand ``item`` over unsettled, without calling the callback (for ``fetch``)."""
        key = next(self._keys)
        self.unsettled[key] = item
        return _MemoryDelivery(self, key, item)

    def deliver(self, item: _Item) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self.on_message(self.hold(item))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def settle(self, key: int, *, requeue: bool) -> None:
        item = self.unsettled.pop(key, None)
        if item is None:  # already settled, or given back when the consumer closed
            return
        if requeue:
            message, exchange, routing_key, _, deadline = item
            self.queue.put((message, exchange, routing_key, True, deadline), front=True)
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


async def _never(delivery: Delivery) -> None:
    raise AssertionError("fetched messages are never delivered to a callback")


class MemoryTransport(Transport):
    """Transport over a process-wide :class:`MemoryBroker`."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._broker: MemoryBroker | None = None
        self._consumers: list[_MemoryConsumer] = []
        self._reply_address = f"memory.reply-to.{uuid.uuid4().hex}"
        self._pending: dict[str, asyncio.Future[Message]] = {}

    @property
    def broker(self) -> MemoryBroker:
        if self._broker is None:
            raise PublishError("the in-memory transport is not connected")
        return self._broker

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

    async def declare_queue(self, spec: QueueSpec) -> None:
        self.broker.declare_queue(spec)

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

    def _queue(self, queue: str) -> _Queue:
        found = self.broker.queues.get(queue)
        if found is None:
            raise ConfigurationError(f"no queue {queue!r} on the in-memory broker")
        return found

    async def queue_size(self, queue: str) -> int:
        return len(self._queue(queue).messages)

    @contextlib.asynccontextmanager
    async def fetch(self, queue: str, limit: int) -> AsyncIterator[list[Delivery]]:
        found = self._queue(queue)
        holder = _MemoryConsumer(found, _never, limit)
        deliveries: list[Delivery] = []
        now = time.monotonic()
        while found.messages and len(deliveries) < limit:
            item = found.messages.popleft()
            if item[4] is None or item[4] >= now:
                deliveries.append(holder.hold(item))
        try:
            yield deliveries
        finally:
            await holder.close()

    async def purge(self, queue: str) -> int:
        found = self._queue(queue)
        count = len(found.messages)
        found.messages.clear()
        return count

    async def consume(self, queue: str, on_message: OnMessage, prefetch: int) -> Consumer:
        found = self._queue(queue)
        consumer = _MemoryConsumer(found, on_message, prefetch)
        found.consumers.append(consumer)
        self._consumers.append(consumer)
        found.dispatch()
        return consumer
