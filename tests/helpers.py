"""Small helpers for the tests: record what handlers saw and wait for it, read queues."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika

import choreo
from choreo.transports import memory
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

    async def wait_for(self, count: int, timeout: float = WAIT) -> list[Any]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items


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
    if bus.url.startswith("memory"):
        broker = memory.broker(bus.url.removeprefix("memory://"))
        return broker.depth(queue) + broker.unsettled(queue)
    connection = await aio_pika.connect(bus.url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()
