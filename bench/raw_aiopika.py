"""The baseline: hand-written aio-pika following best practice.

Robust connection, publisher confirms with BATCH publishes in flight, persistent messages,
one durable fanout exchange, three durable queues, a channel per consumer with prefetch
PREFETCH, ``model_validate_json`` and a per-message ack after the handler.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika

from .common import (
    BATCH,
    PREFETCH,
    QUEUE_TYPE,
    SERVICES,
    Recorder,
    SkuReceivedModel,
    payload,
)

QUEUE_ARGUMENTS = {"x-queue-type": "quorum"} if QUEUE_TYPE == "quorum" else None


class Raw:
    """One side of the workload (publisher, consumers or both) on its own connection."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.exchange_name = f"{namespace}.sku_received"
        self.queues = [f"{namespace}.{s}" for s in SERVICES]
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def open(self) -> None:
        self.connection = await aio_pika.connect_robust(self.url)

    async def declare(self) -> aio_pika.abc.AbstractExchange:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        for name in self.queues:
            queue = await channel.declare_queue(name, durable=True, arguments=QUEUE_ARGUMENTS)
            await queue.bind(exchange)
        return exchange

    async def consume(self, rec: Recorder, done: asyncio.Event) -> None:
        assert self.connection is not None

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            event = SkuReceivedModel.model_validate_json(message.body)
            rec.add(event.sent_at)
            await message.ack()
            if rec.done:
                done.set()

        for name in self.queues:
            channel = await self.connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(name, durable=True, arguments=QUEUE_ARGUMENTS)
            await queue.consume(handle)

    async def publish(self, n: int) -> None:
        exchange = await self.declare()
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

    async def close(self) -> tuple[list[str], list[str]]:
        if self.connection is not None:
            await self.connection.close()
        return self.queues, [self.exchange_name]
