"""Services for ``bench.workers`` and ``bench.partitions``: each validates the event, then
burns ``BENCH_WORK_US`` microseconds of CPU (default 1000), like a handler doing real work."""

from __future__ import annotations

import hashlib
import os
import time

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


# -- bench.partitions: the same work, in order per key (8 partitions) or not ---------------

RECORDS_ENV = "BENCH_RECORDS"  # a folder: one file of fixed-width lines per process
LINE = 47  # bytes per record: start, end (monotonic, %017.6f) and the key (%10s)


class Keyed(Event, key="sku"):
    sku: str
    seq: int


plain = Service("bench-plain", prefetch=128, concurrency=128)
partitioned = Service("bench-partitioned", partitions=8, prefetch=128, concurrency=128)
_records: list[int] = []


def _record(started: float, sku: str) -> None:
    if not _records:
        folder = os.environ[RECORDS_ENV]
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        _records.append(os.open(os.path.join(folder, f"{os.getpid()}.log"), flags))
    line = f"{started:017.6f} {time.monotonic():017.6f} {sku:>10}\n"
    os.write(_records[0], line.encode())


@plain.on(Keyed)
@partitioned.on(Keyed)
async def burn(event: Keyed) -> None:
    started = time.monotonic()
    digest = event.sku.encode()
    for _ in range(ROUNDS):
        digest = hashlib.sha256(digest).digest()
    _record(started, event.sku)
