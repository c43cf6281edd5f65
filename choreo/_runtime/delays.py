"""Delayed publishing through the broker: a bus's delay levels (``choreo/delay.py`` says
how they cascade), declared on its first delayed publish, and the publish into them.
"""

from __future__ import annotations

import asyncio
import time

from .. import topology, wire
from ..delay import LEVELS
from ..errors import ConfigurationError, Unroutable
from ..observability import tracing
from ..observability.observer import Observer
from ..transports.base import FANOUT, Message
from .declare import Declarer

__all__ = ["DelayLevels"]


class DelayLevels:
    """The delay levels of one bus's namespace."""

    def __init__(self, declarer: Declarer, namespace: str, observer: Observer) -> None:
        self._declarer = declarer
        self._namespace = namespace
        self._observer = observer
        self._deliver = topology.delay_delivery_name(namespace)
        self._ready: asyncio.Future[None] | None = None

    async def publish(self, message: Message, seconds: int, key: str | None) -> str:
        """Publish ``message`` (an encoded event, its ordering ``key``) so that it reaches
        its exchange in ``seconds`` (1 to ``delay.MAX_DELAY``); return its message id once
        confirmed. Its bucket travels as a ``BCC`` routing key, so it reaches partition
        queues too."""
        name = message.type or ""
        bucket = _bucket(message, seconds, key)
        if tracing.ENABLED:
            tracing.inject(message.headers)
        declarer = self._declarer
        exchange = topology.exchange_name(self._namespace, name)
        if exchange not in declarer.exchanges:
            await declarer.exchange(exchange, FANOUT)
        await self.declare()
        await declarer.bind_exchange(exchange, self._deliver, topology.delay_delivery_key(exchange))
        message.headers[wire.EXCHANGE_HEADER] = exchange
        # the broker's x-death entries of another cascade (headers a handler passed on)
        # would make it take a level it dies into again for a cycle, and drop the message
        message.headers.pop(wire.DEATH_HEADER, None)
        message.headers[wire.BCC_HEADER] = [bucket]  # replaces one passed on in headers=
        first = topology.delay_level_name(self._namespace, seconds.bit_length() - 1)
        key = topology.delay_routing_key(seconds, exchange)
        started = time.perf_counter()
        try:
            await declarer.transport.publish(message, first, key, mandatory=True)
        except Unroutable:
            self.reset()  # its queue was deleted under this bus: declare again next time
            raise Unroutable(
                f"delay level {first!r} routes to no queue (deleted?): {name!r} was not sent"
            ) from None
        self._observer.published(name, time.perf_counter() - started)
        return message.message_id  # type: ignore[return-value]  # wire always sets it

    async def declare(self) -> None:
        """Declare the levels unless this connection did; concurrent callers share one
        declaration, and a failed one is tried again by the next caller."""
        ready = self._ready
        if ready is None or (ready.done() and (ready.cancelled() or ready.exception())):
            ready = self._ready = asyncio.ensure_future(self._declare())
        elif ready.done():
            return
        try:
            await asyncio.shield(ready)
        except BaseException:
            if ready.done() and self._ready is ready:
                self._ready = None
            raise

    async def _declare(self) -> None:
        plan = topology.delay_plan(self._namespace)
        for name, kind in plan.exchanges:
            await self._declarer.exchange(name, kind)
        for queue in plan.queues:
            await self._declarer.queue(queue)
        for destination, source, key in plan.exchange_bindings:
            await self._declarer.bind_exchange(destination, source, key)

    def reset(self) -> None:
        """Declare the levels again on the next delayed publish (a new connection)."""
        self._ready = None


def _bucket(message: Message, seconds: int, key: str | None) -> str:
    """The bucket a delayed message carries (in ``BCC``): of its ordering key, else of its
    message id. Bucket 0 cannot start at level 20 (2**20 s or more): the level's ``0.#``
    binding would match it and send the message down, as well, as if that level's bit
    were 0 (``delay.py``); a keyed event is refused, one without a key takes bucket 1."""
    bucket = topology.routing_key_of(key, message.message_id)
    if bucket != "0" or seconds < 1 << (LEVELS - 1):
        return bucket
    if key is None:
        return "1"  # no order to keep: any bucket will do
    raise ConfigurationError(
        f"a delay of {seconds} s (2**{LEVELS - 1} s or more) cannot go through the broker's "
        f"delay levels for ordering key {key!r}, whose bucket is 0; publish it through a "
        "store (choreo.sql.Store: tx.publish(event, delay=...))"
    )
