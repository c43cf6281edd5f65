"""A service for ``bench.workers``: validates the event, then burns ``BENCH_WORK_US``
microseconds of CPU (default 1000), like a handler doing real work."""

from __future__ import annotations

import hashlib
import os

from choreo import Event, Service


class Job(Event):
    sku: str
    quantity: int
    warehouse: str


service = Service("bench-worker", prefetch=128, concurrency=128)
ROUNDS = int(float(os.environ.get("BENCH_WORK_US", "1000")) / 0.36)  # ~0.36 us per sha256


@service.on(Job)
async def work(job: Job) -> None:
    digest = job.sku.encode()
    for _ in range(ROUNDS):
        digest = hashlib.sha256(digest).digest()
