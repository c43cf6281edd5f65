"""Small helpers for the tests: record what handlers saw and wait for it, read queues, and
prove that nothing else is coming (a sentinel barrier instead of a sleep)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import choreo
from choreo import Event, Service
from choreo.transports.base import Delivery

WAIT = 20.0  # seconds: an upper bound for things that happen in milliseconds, not a speed test


class Recorder:
    """A list of what handlers saw, with a way to wait until enough arrived."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def add(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_until(
        self, done: Callable[[list[Any]], bool], timeout: float = WAIT
    ) -> list[Any]:
        """Wait until ``done(items)`` holds."""
        async with asyncio.timeout(timeout):
            while not done(self.items):
                self._changed.clear()
                await self._changed.wait()
        return self.items

    async def wait_for(self, count: int, timeout: float = WAIT) -> list[Any]:
        return await self.wait_until(lambda items: len(items) >= count, timeout)


async def drain_queue(bus: choreo.Bus, queue: str, expect: int) -> list[Delivery]:
    """Consume ``expect`` messages from ``queue`` (acking them) through the bus's transport."""
    got: list[Delivery] = []
    done = asyncio.Event()

    async def take(delivery: Delivery) -> None:
        got.append(delivery)
        await delivery.ack()
        if len(got) >= expect:
            done.set()

    consumer = await bus.transport.consume(queue, take, prefetch=100)
    try:
        async with asyncio.timeout(WAIT):
            await done.wait()
    finally:
        await consumer.close()
    return got


async def ready_count(bus: choreo.Bus, queue: str) -> int:
    """Messages ready in ``queue`` (call when nothing consumes it)."""
    return await bus.transport.queue_size(queue)


async def idle(*buses: choreo.Bus, timeout: float = WAIT) -> None:
    """Wait until no handler of ``buses`` is in flight: every delivery they took is settled.

    A delivery handed over in one turn of the event loop starts (and counts) in the next,
    so "none in flight" must still hold one turn later.
    """
    async with asyncio.timeout(timeout):
        while True:
            if not any(bus.in_flight for bus in buses):
                await asyncio.sleep(0)
                if not any(bus.in_flight for bus in buses):
                    return
            await asyncio.sleep(0.01)


class Sentinel(Event, name="test_sentinel"):
    """Published after the messages a test watches; see :class:`Barrier`."""

    token: str


class Barrier:
    """A positive "nothing else is coming" check, instead of sleeping and hoping.

    ``join`` gives a service a handler for :class:`Sentinel`, on the service's own queue.
    ``cross`` publishes a sentinel, waits until every joined service handled its copy
    (publishing more sentinels, each waited for the same way, until every joined instance
    of a service with competing consumers handled one), then waits until no handler of
    the consuming buses is in flight. A queue hands its messages to a consumer in order and
    the consumer starts them in order, so by then every message that reached those queues
    before the sentinel has been handled; what did not arrive will not arrive. No sentinel
    is left in a queue.
    """

    def __init__(self) -> None:
        self._reached = Recorder()  # (service, instance, token)
        self._members: set[tuple[str, str]] = set()

    def join(self, service: Service, instance: str = "") -> Service:
        member = (service.name, instance)
        self._members.add(member)

        @service.on(Sentinel)
        async def reached(event: Sentinel) -> None:
            self._reached.add((*member, event.token))

        return service

    async def cross(self, publisher: choreo.Bus, *consumers: choreo.Bus) -> None:
        """Publish sentinels on ``publisher``; wait for them and for ``consumers`` (default:
        the publisher) to have no handler in flight."""
        missing = set(self._members)
        async with asyncio.timeout(WAIT):
            while missing:
                missing -= await self._send(publisher)
            await idle(*(consumers or (publisher,)))

    async def _send(self, publisher: choreo.Bus) -> set[tuple[str, str]]:
        """One sentinel, handled once by every joined service; the instances that took it."""
        services = {name for name, _ in self._members}
        token = uuid.uuid4().hex
        await publisher.publish(Sentinel(token=token))
        items = await self._reached.wait_until(
            lambda items: {name for name, _, t in items if t == token} >= services
        )
        return {(name, instance) for name, instance, t in items if t == token}
