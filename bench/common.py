"""Shared by the benchmark implementations: payload, event, results, queue hygiene."""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field

import aio_pika
from pydantic import BaseModel

SERVICES = ("inventory", "catalog", "wishlist")
BATCH = 128  # publishes in flight at once
PREFETCH = 256
# classic or quorum queues, on both sides (python -m bench.fanout --queue-type quorum)
QUEUE_TYPE = os.environ.get("CHOREO_BENCH_QUEUE_TYPE", "classic")


class SkuReceivedModel(BaseModel):
    """The payload both implementations validate: {"sku", "quantity", "warehouse", "sent_at"}."""

    sku: str
    quantity: int
    warehouse: str
    sent_at: float


def payload(i: int) -> dict[str, object]:
    return {"sku": f"SKU-{i:06d}", "quantity": i % 10, "warehouse": "north", "sent_at": time.time()}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Recorder:
    """What the consumers saw: per-delivery latency and when the last one finished."""

    expected: int
    latencies: list[float] = field(default_factory=list)
    last_done: float = 0.0

    def add(self, sent_at: float) -> None:
        now = time.time()
        self.latencies.append(now - sent_at)
        self.last_done = time.perf_counter()

    @property
    def done(self) -> bool:
        return len(self.latencies) >= self.expected


@dataclass
class Result:
    impl: str
    n: int
    deliveries: int
    e2e_per_s: float
    publish_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_delivery: float
    peak_rss_mb: float
    pid: int = field(default_factory=os.getpid)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def summarize(
    impl: str, n: int, rec: Recorder, t0: float, t_published: float, cpu: float
) -> Result:
    lat = sorted(rec.latencies)
    return Result(
        impl=impl,
        n=n,
        deliveries=len(lat),
        e2e_per_s=len(lat) / (rec.last_done - t0),
        publish_per_s=n / (t_published - t0),
        p50_ms=statistics.median(lat) * 1000,
        p99_ms=lat[int(len(lat) * 0.99) - 1] * 1000,
        cpu_us_per_delivery=cpu / len(lat) * 1e6,
        peak_rss_mb=peak_rss_mb(),
    )


async def check_and_delete(url: str, queues: list[str], exchanges: list[str]) -> dict[str, int]:
    """Messages left ready in each queue (must be 0 once consumers closed), then delete all."""
    connection = await aio_pika.connect(url)
    left = {}
    try:
        for name in queues:
            channel = await connection.channel()
            declared = await channel.declare_queue(name, passive=True)
            left[name] = int(declared.declaration_result.message_count or 0)
            await channel.queue_delete(name)
            await channel.close()
        for name in exchanges:
            channel = await connection.channel()
            await channel.exchange_delete(name)
            await channel.close()
    finally:
        await connection.close()
    return left
