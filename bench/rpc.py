"""Request-response round trips: choreo's bus.request against raw aio-pika direct reply-to.

    python -m bench.rpc [--n 5000] [--runs 3] [--inflight 64]

Each run (a fresh subprocess, alternating raw / choreo) answers N requests, at most
``--inflight`` at a time, from a responder on the same broker, and reports round trips/s,
latency p50/p99 and client CPU per round trip (requester and responder share the process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

import aio_pika

from choreo import Event, Service, connect

from .common import cpu_seconds

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


class Ask(Event):
    sku: str


class Answer(Event):
    sku: str
    available: int


async def choreo_run(url: str, n: int, inflight: int) -> dict[str, float]:
    service = Service("stock", prefetch=256, concurrency=256)

    @service.responds(Ask)
    async def answer(query: Ask) -> Answer:
        return Answer(sku=query.sku, available=len(query.sku))

    namespace = f"bench-rpc-{uuid.uuid4().hex[:8]}"
    latencies: list[float] = []
    async with connect(url, namespace=namespace) as bus:
        await bus.start(service)
        limit = asyncio.Semaphore(inflight)

        async def one(i: int) -> None:
            async with limit:
                start = time.perf_counter()
                reply = await bus.request(Ask(sku=f"SKU-{i}"), Answer, timeout=30)
                latencies.append(time.perf_counter() - start)
                assert reply.sku == f"SKU-{i}"

        cpu0, t0 = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        queues, exchanges = bus.declared_queues, bus.declared_exchanges
    await _delete(url, queues, exchanges)
    return _figures(n, elapsed, cpu, latencies)


async def raw_run(url: str, n: int, inflight: int) -> dict[str, float]:
    """Best-practice aio-pika RPC: direct reply-to, futures by correlation id."""
    namespace = f"bench-rpc-{uuid.uuid4().hex[:8]}"
    queue_name = f"{namespace}.stock.requests"
    connection = await aio_pika.connect_robust(url)
    server_channel = await connection.channel()
    await server_channel.set_qos(prefetch_count=256)
    queue = await server_channel.declare_queue(queue_name, durable=True)

    async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        query = Ask.model_validate_json(message.body)
        reply = Answer(sku=query.sku, available=len(query.sku))
        await server_channel.default_exchange.publish(
            aio_pika.Message(
                reply.model_dump_json().encode(),
                correlation_id=message.correlation_id,
                content_type="application/json",
            ),
            routing_key=message.reply_to or "",
        )
        await message.ack()

    await queue.consume(serve)
    client = await connection.channel(publisher_confirms=True)
    pending: dict[str, asyncio.Future[bytes]] = {}

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        future = pending.pop(message.correlation_id or "", None)
        if future is not None:
            future.set_result(message.body)

    replies = await client.declare_queue("amq.rabbitmq.reply-to", passive=True)
    await replies.consume(on_reply, no_ack=True)
    latencies: list[float] = []
    limit = asyncio.Semaphore(inflight)
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        async with limit:
            start = time.perf_counter()
            correlation_id = uuid.uuid4().hex
            future: asyncio.Future[bytes] = loop.create_future()
            pending[correlation_id] = future
            await client.default_exchange.publish(
                aio_pika.Message(
                    Ask(sku=f"SKU-{i}").model_dump_json().encode(),
                    correlation_id=correlation_id,
                    reply_to="amq.rabbitmq.reply-to",
                    content_type="application/json",
                    expiration=30,
                ),
                routing_key=queue_name,
            )
            reply = Answer.model_validate_json(await asyncio.wait_for(future, 30))
            latencies.append(time.perf_counter() - start)
            assert reply.sku == f"SKU-{i}"

    cpu0, t0 = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    await server_channel.queue_delete(queue_name)
    await connection.close()
    return _figures(n, elapsed, cpu, latencies)


def _figures(n: int, elapsed: float, cpu: float, latencies: list[float]) -> dict[str, float]:
    latencies.sort()
    return {
        "round_trips_per_s": n / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "cpu_us_per_round_trip": cpu / n * 1e6,
    }


async def _delete(url: str, queues: set[str], exchanges: set[str]) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    for name in queues:
        await channel.queue_delete(name)
    for name in exchanges:
        await channel.exchange_delete(name)
    await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--url", default=os.environ.get("CHOREO_BENCH_URL", DEFAULT_URL))
    parser.add_argument("--one", choices=("raw", "choreo"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run = raw_run if args.one == "raw" else choreo_run
        print(json.dumps(asyncio.run(run(args.url, args.n, args.inflight))))
        return
    results: dict[str, list[dict[str, float]]] = {"raw": [], "choreo": []}
    for _ in range(args.runs):
        for impl in results:
            command = [sys.executable, "-m", "bench.rpc", "--one", impl, "--n", str(args.n)]
            command += ["--inflight", str(args.inflight), "--url", args.url]
            out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
            results[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"request-response, N={args.n:,}, {args.inflight} in flight, median of {args.runs}")
    for key in ("round_trips_per_s", "p50_ms", "p99_ms", "cpu_us_per_round_trip"):
        cells = [f"{statistics.median(r[key] for r in runs):>12,.1f}" for runs in results.values()]
        print(
            f"  {key:24}"
            + "".join(f"{impl:>8} {cell}" for impl, cell in zip(results, cells, strict=True))
        )


if __name__ == "__main__":
    main()
