"""The in-memory broker: queues, exchanges, consumers and deliveries, with RabbitMQ's
semantics (see the package docstring)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ...errors import ConfigurationError, PublishError, Unroutable
from ..base import (
    DIRECT,
    FANOUT,
    Consumer,
    Delivery,
    Message,
    OnCancelled,
    OnMessage,
    QueueSpec,
)

__all__ = ["Item", "MemoryBroker", "MemoryConsumer", "Queue"]


@dataclasses.dataclass(slots=True)
class Item:
    """A message in a queue, with what the broker knows of it."""

    message: Message
    exchange: str
    routing_key: str
    redelivered: bool = False
    deadline: float | None = None  # monotonic seconds: its per-message expiration
    returns: int = 0  # times it came back to the queue unsettled (quorum delivery-count)
    also: tuple[str, ...] = ()  # its CC and BCC routing keys (sender-selected distribution)


class Queue:
    __slots__ = (
        "_turn",
        "arguments",
        "broker",
        "consumers",
        "dead_letter_to",
        "delivery_limit",
        "messages",
        "name",
        "ttl",
    )

    def __init__(self, name: str, broker: MemoryBroker, arguments: dict[str, object]) -> None:
        self.name = name
        self.arguments = arguments
        self.messages: deque[Item] = deque()
        self.consumers: list[MemoryConsumer] = []
        self._turn = itertools.count()
        self.broker = broker
        ttl = arguments.get("x-message-ttl")
        self.ttl = ttl / 1000 if isinstance(ttl, int) else None
        exchange = arguments.get("x-dead-letter-exchange")
        key = arguments.get("x-dead-letter-routing-key")
        self.dead_letter_to = (
            (str(exchange), None if key is None else str(key)) if exchange is not None else None
        )
        limit = arguments.get("x-delivery-limit")
        quorum = arguments.get("x-queue-type") == "quorum"
        self.delivery_limit = limit if quorum and isinstance(limit, int) else None

    def put(self, item: Item, *, front: bool = False) -> None:
        if front:
            self.messages.appendleft(item)
        else:
            self.messages.append(item)
            if self.ttl is not None:
                asyncio.get_running_loop().call_later(self.ttl, self._expire, item)
            if item.deadline is not None:  # its own expiration
                delay = max(0.0, item.deadline - time.monotonic())
                asyncio.get_running_loop().call_later(delay, self._expire, item)
        self.dispatch()

    def _expire(self, item: Item) -> None:
        """The queue's TTL has passed: drop the message, or dead-letter it as RabbitMQ does."""
        for index, waiting in enumerate(self.messages):
            if waiting is item:
                del self.messages[index]
                break
        else:
            return  # consumed or purged meanwhile
        self.dead_letter(item, "expired")

    def dead_letter(self, item: Item, reason: str) -> None:
        """Drop ``item``, into the queue's dead-letter exchange if it has one, with an
        ``x-death`` entry as RabbitMQ adds (reason, queue, exchange, routing keys)."""
        if self.dead_letter_to is None:
            return
        exchange, key = self.dead_letter_to
        message = item.message
        death = {
            "reason": reason,
            "queue": self.name,
            "count": 1,
            "exchange": item.exchange,
            "routing-keys": [item.routing_key, *_routes(message.headers, ("CC",))],  # not BCC
            "time": int(time.time()),
        }
        previous = message.headers.get("x-death")
        deaths = [death, *previous] if isinstance(previous, list) else [death]
        copy = dataclasses.replace(
            message, headers={**message.headers, "x-death": deaths}, expiration=None
        )
        if key is not None:  # the queue's key replaces all of its keys, CC and BCC too
            copy.headers.pop("CC", None)
        if exchange and exchange not in self.broker.exchanges:
            return  # RabbitMQ drops what it would dead-letter to a missing exchange
        keys = (item.routing_key, item.also) if key is None else (key, ())
        self.broker.publish(copy, exchange, keys[0], False, dead_lettered=reason, also=keys[1])

    def give_back(self, item: Item, *, dispatch: bool = True) -> None:
        """An unsettled message returns to the head of the queue, flagged as redelivered;
        past a quorum queue's delivery limit it is dead-lettered instead."""
        item.redelivered = True
        item.returns += 1
        if self.delivery_limit is not None and item.returns >= self.delivery_limit:
            self.dead_letter(item, "delivery_limit")
        else:
            self.messages.appendleft(item)
        if dispatch:
            self.dispatch()

    def dispatch(self) -> None:
        """Hand messages to consumers with room, round-robin, as RabbitMQ does."""
        single = self.arguments.get("x-single-active-consumer") is True
        while self.messages:
            active = self.consumers[:1] if single else self.consumers  # the first subscribed
            ready = [c for c in active if len(c.unsettled) < c.prefetch]
            if not ready:
                return
            item = self.messages.popleft()
            deadline = item.deadline
            if deadline is not None and deadline < time.monotonic():
                self.dead_letter(item, "expired")  # as RabbitMQ does at the head of the queue
                continue
            ready[next(self._turn) % len(ready)].deliver(item)


@functools.lru_cache(maxsize=4096)
def _words(key: str) -> tuple[str, ...]:
    return tuple(key.split(".")) if key else ()


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """Whether a topic binding key matches ``routing_key``, as RabbitMQ's topic exchange
    decides: words split on ``.``, ``*`` stands for exactly one word, ``#`` for any number
    (zero included)."""
    pattern, words = _words(binding_key), _words(routing_key)
    reach = [True] + [False] * len(words)  # reach[j]: the pattern so far matches words[:j]
    for token in pattern:
        if token == "#":
            for j in range(1, len(reach)):
                reach[j] = reach[j] or reach[j - 1]
        else:
            for j in range(len(words), 0, -1):
                reach[j] = reach[j - 1] and token in ("*", words[j - 1])
            reach[0] = False
    return reach[-1]


def _routes(headers: dict[str, Any], names: tuple[str, ...] = ("CC", "BCC")) -> tuple[str, ...]:
    """The routing keys the ``CC`` and ``BCC`` headers add (arrays of strings)."""
    return tuple(str(k) for n in names if isinstance(headers.get(n), list) for k in headers[n])


def _cycle(queue: str, deaths: list[object]) -> bool:
    """RabbitMQ's check: ``queue`` is among the message's ``x-death`` entries (latest
    first), and none of the entries from the latest to it is a rejection."""
    for death in deaths:
        if not isinstance(death, dict) or death.get("reason") == "rejected":
            return False
        if death.get("queue") == queue:
            return True
    return False


@dataclasses.dataclass(slots=True)
class _Exchange:
    kind: str
    bindings: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # (queue, key)
    exchanges: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # (exchange, key)

    def routes(self, binding_key: str, routing_key: str) -> bool:
        if self.kind == FANOUT:
            return True
        if self.kind == DIRECT:
            return binding_key == routing_key
        return topic_matches(binding_key, routing_key)


class MemoryBroker:
    """Exchanges, bindings, queues and reply addresses of one in-memory broker."""

    def __init__(self) -> None:
        self.exchanges: dict[str, _Exchange] = {}
        self.queues: dict[str, Queue] = {}
        self.reply_addresses: dict[str, Callable[[Message], None]] = {}

    def declare_exchange(self, name: str, kind: str) -> None:
        found = self.exchanges.get(name)
        if found is None:
            self.exchanges[name] = _Exchange(kind)
        elif found.kind != kind:
            raise ConfigurationError(f"exchange {name!r} exists with other settings ({found.kind})")

    def declare_queue(self, spec: QueueSpec) -> None:
        arguments = dict(spec.arguments)
        found = self.queues.get(spec.name)
        if found is None:
            self.queues[spec.name] = Queue(spec.name, self, arguments)
        elif found.arguments != arguments:  # RabbitMQ: PRECONDITION_FAILED, inequivalent arg
            raise ConfigurationError(
                f"queue {spec.name!r} exists with other settings: {found.arguments} "
                f"(declared now with {arguments})"
            )
        for exchange, key in spec.bindings:
            if exchange not in self.exchanges:
                raise ConfigurationError(f"cannot bind {spec.name!r}: no exchange {exchange!r}")
            self.exchanges[exchange].bindings.add((spec.name, key))

    def bind_exchange(self, destination: str, source: str, routing_key: str) -> None:
        for name in (destination, source):
            if name not in self.exchanges:
                raise ConfigurationError(f"cannot bind exchange {destination!r}: no {name!r}")
        self.exchanges[source].exchanges.add((destination, routing_key))

    def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        """Remove one binding; as on RabbitMQ, nothing happens when there is none."""
        found = self.exchanges.get(exchange)
        if found is not None:
            found.bindings.discard((queue, routing_key))

    def bindings(self, queue: str) -> list[tuple[str, str]]:
        """``queue``'s bindings as (exchange, routing key), sorted; the default exchange's,
        implicit, is not among them."""
        return sorted(
            (name, key)
            for name, exchange in self.exchanges.items()
            for bound, key in exchange.bindings
            if bound == queue
        )

    def publish(
        self,
        message: Message,
        exchange: str,
        routing_key: str,
        mandatory: bool,
        *,
        dead_lettered: str | None = None,
        also: tuple[str, ...] | None = None,
    ) -> None:
        """Route ``message`` into queues (or a reply address). ``dead_lettered``: the reason
        a queue dead-letters it; as RabbitMQ does, a queue that would close a cycle of
        deaths without a rejection in it does not get it; ``also``: its CC and BCC keys."""
        also = _routes(message.headers) if also is None else also
        if exchange == "":  # the default exchange: a queue, or a reply address, by name
            reply = self.reply_addresses.get(routing_key)
            if reply is not None:
                reply(message)
                return
            targets = [key for key in dict.fromkeys((routing_key, *also)) if key in self.queues]
        elif exchange in self.exchanges:
            targets = self.route(exchange, routing_key, also)
        else:
            raise PublishError(f"no exchange {exchange!r} on the in-memory broker")
        deaths = message.headers.get("x-death")
        if dead_lettered not in (None, "rejected") and isinstance(deaths, list):
            targets = [name for name in targets if not _cycle(name, deaths)]
        if not targets and mandatory:
            raise Unroutable(f"no queue is bound for {routing_key or exchange!r}")
        deadline = None if message.expiration is None else time.monotonic() + message.expiration
        for name in targets:
            headers = {k: v for k, v in message.headers.items() if k != "BCC"}
            copy = dataclasses.replace(message, headers=headers)
            self.queues[name].put(Item(copy, exchange, routing_key, deadline=deadline, also=also))

    def route(self, exchange: str, routing_key: str, also: tuple[str, ...] = ()) -> list[str]:
        """The queues ``exchange`` routes ``routing_key`` (and the keys ``also``) to, through
        exchange-to-exchange bindings too: as on RabbitMQ, each exchange is visited once,
        routing all the keys, and each queue gets one copy, however many paths lead to it."""
        queues: set[str] = set()
        seen, pending, keys = {exchange}, [exchange], (routing_key, *also)
        while pending:
            found = self.exchanges.get(pending.pop())
            if found is None:
                continue
            queues.update(q for q, b in found.bindings if any(found.routes(b, k) for k in keys))
            for destination, key in found.exchanges:
                if destination not in seen and any(found.routes(key, k) for k in keys):
                    seen.add(destination)
                    pending.append(destination)
        return sorted(queues)

    def delete_queue(self, name: str) -> None:
        """Drop the queue, its messages and bindings; its consumers are told, as RabbitMQ
        tells them with ``basic.cancel``."""
        queue = self.queues.pop(name, None)
        if queue is None:
            return
        for exchange in self.exchanges.values():
            exchange.bindings = {(q, key) for q, key in exchange.bindings if q != name}
        queue.messages.clear()
        for consumer in list(queue.consumers):
            consumer.broker_cancelled()

    def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (not counting those handed to a consumer)."""
        return len(self.queues[queue].messages)

    def unsettled(self, queue: str) -> int:
        """Messages of ``queue`` handed to a consumer and not yet settled."""
        return sum(len(c.unsettled) for c in self.queues[queue].consumers)


class MemoryDelivery(Delivery):
    __slots__ = ("_consumer", "_key")

    def __init__(self, consumer: MemoryConsumer, key: int, item: Item) -> None:
        super().__init__(item.message, item.exchange, item.routing_key, item.redelivered)
        self._consumer = consumer
        self._key = key

    async def ack(self) -> None:
        self._consumer.settle(self._key, requeue=False)

    async def reject(self, requeue: bool) -> None:
        self._consumer.settle(self._key, requeue=requeue, dropped=not requeue)


class MemoryConsumer(Consumer):
    def __init__(
        self,
        queue: Queue,
        on_message: OnMessage,
        prefetch: int,
        on_cancelled: OnCancelled | None = None,
    ) -> None:
        self.queue = queue
        self.on_cancelled = on_cancelled
        self.on_message = on_message
        self.prefetch = prefetch
        self.unsettled: dict[int, Item] = {}
        self.cancelled = False
        self._keys = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    def hold(self, item: Item) -> MemoryDelivery:
        """Hand ``item`` over unsettled, without calling the callback (for ``fetch``)."""
        key = next(self._keys)
        self.unsettled[key] = item
        return MemoryDelivery(self, key, item)

    def deliver(self, item: Item) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(
            self.on_message(self.hold(item))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def settle(self, key: int, *, requeue: bool, dropped: bool = False) -> None:
        """Settle an unsettled message: ack (neither flag), give it back (``requeue``), or
        reject it without requeue (``dropped``: into the dead-letter exchange)."""
        item = self.unsettled.pop(key, None)
        if item is None:  # already settled, or given back when the consumer closed
            return
        if requeue:
            self.queue.give_back(item)
        elif dropped:
            self.queue.dead_letter(item, "rejected")
            self.queue.dispatch()
        else:
            self.queue.dispatch()

    async def cancel(self) -> None:
        self.cancelled = True
        await self.pause()

    async def pause(self) -> None:
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)

    async def resume(self) -> None:
        current = self.queue.broker.queues.get(self.queue.name)
        if current is None:
            raise ConfigurationError(f"cannot consume {self.queue.name!r}: no such queue")
        self.queue = current  # the queue was deleted and declared again meanwhile
        if not self.cancelled and self not in current.consumers:
            current.consumers.append(self)
            current.dispatch()

    def broker_cancelled(self) -> None:
        if self in self.queue.consumers:
            self.queue.consumers.remove(self)
        if self.on_cancelled is not None and not self.cancelled:
            task = asyncio.get_running_loop().create_task(self.on_cancelled())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        await self.cancel()
        for key in sorted(self.unsettled, reverse=True):  # all back, in order, then deliver
            self.queue.give_back(self.unsettled.pop(key), dispatch=False)
        self.queue.dispatch()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
