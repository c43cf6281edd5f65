"""Retry through the broker: park a copy of the message in a retry queue of its service.

The retry queue's TTL is the wait; when it expires the broker dead-letters the copy back
to the service's own queue (see ``topology.retry_queue``), carrying the attempt it is on
and the event it was handled as (``wire.retry_copy``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .. import topology
from ..transports.base import Message, QueueSpec, Transport
from ..wire import retry_copy

__all__ = ["BrokerRetry"]


class BrokerRetry:
    """The retry queues of one service queue, declared on first use."""

    def __init__(
        self,
        transport: Transport,
        queue: str,
        queue_type: str,
        declare_queue: Callable[[QueueSpec], Awaitable[None]],
    ) -> None:
        self._transport = transport
        self._queue = queue
        self._queue_type = queue_type
        self._declare_queue = declare_queue
        self._declared: set[str] = set()

    async def park(self, message: Message, *, attempt: int, event: str, delay: float) -> str:
        """Publish the copy that comes back as ``attempt`` after ``delay`` seconds (``0``: to
        the service queue itself); return the queue it went to. Raises ``ChoreoError`` when
        the broker did not take it."""
        return await self.send(retry_copy(message, attempt, event), delay)

    async def send(self, copy: Message, delay: float) -> str:
        """Publish ``copy`` so that it reaches the service queue after ``delay`` seconds
        (``0``: at once); return the queue it went to."""
        if delay <= 0:
            await self._transport.publish(copy, "", self._queue, mandatory=True)
            return self._queue
        spec = topology.retry_queue(self._queue, round(delay * 1000), self._queue_type)
        if spec.name not in self._declared:
            await self._declare_queue(spec)
            self._declared.add(spec.name)
        await self._transport.publish(copy, "", spec.name, mandatory=True)
        return spec.name
