"""The same workload with choreo: three services handle one event."""

from __future__ import annotations

import asyncio

from choreo import Bus, Event, Service, connect

from .common import BATCH, PREFETCH, QUEUE_TYPE, SERVICES, Recorder, payload


class SkuReceived(Event):
    sku: str
    quantity: int
    warehouse: str
    sent_at: float


def services(rec: Recorder, done: asyncio.Event) -> list[Service]:
    made = []
    for name in SERVICES:
        service = Service(name, prefetch=PREFETCH, concurrency=PREFETCH)

        @service.on(SkuReceived)
        async def handle(event: SkuReceived) -> None:
            rec.add(event.sent_at)
            if rec.done:
                done.set()

        made.append(service)
    return made


class Choreo:
    """One side of the workload (publisher, consumers or both) on its own bus."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self.bus: Bus | None = None

    async def open(self) -> None:
        self.bus = await connect(
            self.url, namespace=self.namespace, connection_name="bench", queue_type=QUEUE_TYPE
        )

    async def declare(self) -> None:
        assert self.bus is not None
        await self.bus.declare(*services(Recorder(0), asyncio.Event()))

    async def consume(self, rec: Recorder, done: asyncio.Event) -> None:
        assert self.bus is not None
        await self.bus.start(*services(rec, done))

    async def publish(self, n: int) -> None:
        assert self.bus is not None
        await self.declare()
        for start in range(0, n, BATCH):
            await asyncio.gather(
                *(
                    self.bus.publish(SkuReceived(**payload(i)))  # type: ignore[arg-type]
                    for i in range(start, min(n, start + BATCH))
                )
            )

    async def close(self) -> tuple[list[str], list[str]]:
        assert self.bus is not None
        names = sorted(self.bus.declared_queues), sorted(self.bus.declared_exchanges)
        await self.bus.close()
        return names
