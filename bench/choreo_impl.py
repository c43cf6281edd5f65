"""The same workload with choreo: three services handle one event."""

from __future__ import annotations

import asyncio
import time

from choreo import Event, Service, connect

from .common import (
    BATCH,
    PREFETCH,
    SERVICES,
    Recorder,
    Result,
    check_and_delete,
    cpu_seconds,
    payload,
    summarize,
)


class SkuReceived(Event):
    sku: str
    quantity: int
    warehouse: str
    sent_at: float


async def run(url: str, n: int, namespace: str) -> Result:
    rec = Recorder(expected=len(SERVICES) * n)
    done = asyncio.Event()
    services = []
    for name in SERVICES:
        service = Service(name, prefetch=PREFETCH, concurrency=PREFETCH)

        @service.on(SkuReceived)
        async def handle(event: SkuReceived) -> None:
            rec.add(event.sent_at)
            if rec.done:
                done.set()

        services.append(service)

    bus = await connect(url, namespace=namespace, connection_name="bench choreo")
    await bus.start(*services)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        await asyncio.gather(
            *(
                bus.publish(SkuReceived(**payload(i)))  # type: ignore[arg-type]
                for i in range(start, min(n, start + BATCH))
            )
        )
    t_published = time.perf_counter()
    await asyncio.wait_for(done.wait(), timeout=600)
    cpu = cpu_seconds() - cpu0
    result = summarize("choreo", n, rec, t0, t_published, cpu)
    queues, exchanges = sorted(bus.declared_queues), sorted(bus.declared_exchanges)
    await bus.close()
    left = await check_and_delete(url, queues, exchanges)
    assert not any(left.values()), f"messages left behind: {left}"
    return result
