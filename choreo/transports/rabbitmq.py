"""RabbitMQ transport over aio-pika: the only module of choreo that imports aio-pika.

One robust connection per bus. Publishing uses one channel in publisher-confirm mode, so
many concurrent publishes are pipelined on it and each returns when its own confirm comes
back. Each consumer gets a channel of its own, with its own prefetch. aio-pika's robust
connection reconnects, re-declares what was declared through it, and restores consumers.
Errors of aio-pika and aiormq are translated here into choreo's own errors.
"""

from __future__ import annotations

import logging

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from ..config import redact
from ..errors import ConfigurationError, ConnectionFailed, PublishError
from .base import Consumer, Delivery, Message, OnMessage, QueueSpec, Transport

__all__ = ["RabbitMQTransport"]

log = logging.getLogger("choreo.rabbitmq")

_PERSISTENT = aio_pika.DeliveryMode.PERSISTENT


class _RabbitDelivery(Delivery):
    __slots__ = ("_incoming",)

    def __init__(self, incoming: AbstractIncomingMessage) -> None:
        message = Message(
            body=incoming.body,
            message_id=incoming.message_id,
            type=incoming.type,
            correlation_id=incoming.correlation_id,
            content_type=incoming.content_type,
            timestamp=int(incoming.timestamp.timestamp()) if incoming.timestamp else None,
            headers=dict(incoming.headers),
        )
        super().__init__(
            message, incoming.exchange or "", incoming.routing_key or "", bool(incoming.redelivered)
        )
        self._incoming = incoming

    async def ack(self) -> None:
        try:
            await self._incoming.ack()
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            # The channel is gone: the broker has already put the message back.
            log.warning("ack of %s lost (%s); it will be redelivered", self.message.message_id, exc)

    async def reject(self, requeue: bool) -> None:
        try:
            await self._incoming.reject(requeue=requeue)
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            log.warning("reject of %s lost (%s)", self.message.message_id, exc)


class _RabbitConsumer(Consumer):
    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, tag: str) -> None:
        self._channel = channel
        self._queue = queue
        self._tag: str | None = tag

    async def cancel(self) -> None:
        tag, self._tag = self._tag, None
        if tag is None or self._channel.is_closed:
            return
        try:
            await self._queue.cancel(tag)
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            log.debug("cancel of consumer %s failed: %s", tag, exc)

    async def close(self) -> None:
        await self.cancel()
        if not self._channel.is_closed:
            try:
                await self._channel.close()
            except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
                log.debug("closing a consumer channel failed: %s", exc)


class RabbitMQTransport(Transport):
    """Transport to a RabbitMQ broker at ``url`` (``amqp://`` or ``amqps://``)."""

    def __init__(
        self,
        url: str,
        *,
        connection_name: str = "choreo",
        connect_timeout: float = 10.0,
        publish_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.connection_name = connection_name
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}

    async def connect(self) -> None:
        where = redact(self.url)
        try:
            self._connection = await aio_pika.connect_robust(
                self.url,
                timeout=self.connect_timeout,
                client_properties={"connection_name": self.connection_name},
            )
            self._channel = await self._connection.channel(publisher_confirms=True)
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
            await self.close()
            reason = str(exc) or type(exc).__name__
            raise ConnectionFailed(f"cannot connect to RabbitMQ at {where}: {reason}") from exc
        except ValueError as exc:  # yarl/aiormq reject a malformed URL
            raise ConfigurationError(f"invalid broker URL {where}: {exc}") from exc

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._exchanges.clear()
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except (aiormq.exceptions.AMQPError, OSError) as exc:
                log.debug("closing the connection failed: %s", exc)

    @property
    def channel(self) -> AbstractChannel:
        if self._channel is None:
            raise ConnectionFailed("the RabbitMQ transport is not connected")
        return self._channel

    async def declare_exchange(self, name: str) -> None:
        try:
            self._exchanges[name] = await self.channel.declare_exchange(
                name, aio_pika.ExchangeType.FANOUT, durable=True
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"exchange {name!r} exists with other settings: {exc}"
            ) from exc

    async def declare_queue(self, spec: QueueSpec) -> None:
        try:
            queue = await self.channel.declare_queue(
                spec.name, durable=True, arguments=dict(spec.arguments) or None
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"queue {spec.name!r} exists with other settings: {exc}"
            ) from exc
        for exchange in spec.bindings:
            await queue.bind(exchange)

    async def publish(self, message: Message, exchange: str, routing_key: str = "") -> None:
        target = self._exchanges.get(exchange)
        if target is None:
            target = self._exchanges[exchange] = (
                self.channel.default_exchange
                if exchange == ""
                else await self.channel.get_exchange(exchange, ensure=False)
            )
        outgoing = aio_pika.Message(
            message.body,
            headers=message.headers,
            content_type=message.content_type,
            delivery_mode=_PERSISTENT,
            correlation_id=message.correlation_id,
            message_id=message.message_id,
            timestamp=message.timestamp,
            type=message.type,
        )
        try:
            await target.publish(outgoing, routing_key, timeout=self.publish_timeout)
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishError(f"broker refused message to {exchange!r}: {exc}") from exc
        except TimeoutError as exc:
            raise PublishError(
                f"no confirm for message to {exchange!r} within {self.publish_timeout}s"
            ) from exc
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            raise PublishError(f"could not publish to {exchange!r}: {exc}") from exc

    async def consume(self, queue: str, on_message: OnMessage, prefetch: int) -> Consumer:
        channel = await self.channel_for_consumer(prefetch)

        async def deliver(incoming: AbstractIncomingMessage) -> None:
            await on_message(_RabbitDelivery(incoming))

        try:
            found = await channel.get_queue(queue, ensure=False)
            tag = await found.consume(deliver, no_ack=False)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            await channel.close()
            raise ConfigurationError(f"cannot consume {queue!r}: no such queue") from exc
        return _RabbitConsumer(channel, found, tag)

    async def channel_for_consumer(self, prefetch: int) -> AbstractChannel:
        if self._connection is None:
            raise ConnectionFailed("the RabbitMQ transport is not connected")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel
