"""The baseline: hand-written aio-pika following best practice.

Robust connection, publisher confirms with BATCH publishes in flight, persistent messages,
one durable fanout exchange, three durable queues, a channel per consumer with prefetch
PREFETCH, ``model_validate_json`` and a per-message ack after the handler.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import aio_pika

from .common import (
    BATCH,
    PREFETCH,
    SERVICES,
    Recorder,
    Result,
    SkuReceivedModel,
    check_and_delete,
    cpu_seconds,
    payload,
    summarize,
)


async def run(
    url: str, n: int, namespace: str, consume: bool = True, publish: bool = True
) -> Result:
    exchange_name = f"{namespace}.sku_received"
    queues = [f"{namespace}.{s}" for s in SERVICES]
    rec = Recorder(expected=len(SERVICES) * n)
    done = asyncio.Event()
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(
        exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
    )
    for name in queues:
        queue = await channel.declare_queue(name, durable=True)
        await queue.bind(exchange)

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        event = SkuReceivedModel.model_validate_json(message.body)
        rec.add(event.sent_at)
        await message.ack()
        if rec.done:
            done.set()

    consumers = []
    for name in queues:
        consumer_channel = await connection.channel()
        await consumer_channel.set_qos(prefetch_count=PREFETCH)
        queue = await consumer_channel.declare_queue(name, durable=True)
        await queue.consume(handle)
        consumers.append(consumer_channel)

    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        json.dumps(payload(i)).encode(),
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=uuid.uuid4().hex,
                        type="sku_received",
                    ),
                    routing_key="",
                )
                for i in range(start, min(n, start + BATCH))
            )
        )
    t_published = time.perf_counter()
    await asyncio.wait_for(done.wait(), timeout=600)
    cpu = cpu_seconds() - cpu0
    result = summarize("raw aio-pika", n, rec, t0, t_published, cpu)
    for consumer_channel in consumers:
        await consumer_channel.close()
    await connection.close()
    left = await check_and_delete(url, queues, [exchange_name])
    assert not any(left.values()), f"messages left behind: {left}"
    return result
