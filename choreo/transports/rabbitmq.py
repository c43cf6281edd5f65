"""RabbitMQ transport over aio-pika: the only module of choreo that imports aio-pika.

One robust connection per bus. Publishing uses one channel in publisher-confirm mode, so
many concurrent publishes are pipelined on it and each returns when its own confirm comes
back. Each consumer gets a channel of its own, with its own prefetch. Requests go out on a
channel of their own that also consumes RabbitMQ's direct reply-to pseudo-queue
(``amq.rabbitmq.reply-to``), as direct reply-to requires; replies are matched to pending
requests by correlation id. aio-pika's robust connection reconnects, re-declares what was
declared through it, and restores consumers. Errors of aio-pika and aiormq are translated
here into choreo's own errors.
"""

from __future__ import annotations

import asyncio
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
from ..errors import (
    ConfigurationError,
    ConnectionFailed,
    NoResponder,
    PublishError,
    RequestTimeout,
    Unroutable,
)
from .base import FANOUT, Consumer, Delivery, Message, OnMessage, QueueSpec, Transport

__all__ = ["RabbitMQTransport"]

log = logging.getLogger("choreo.rabbitmq")

_PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
_TRANSIENT = aio_pika.DeliveryMode.NOT_PERSISTENT
REPLY_TO = "amq.rabbitmq.reply-to"
_AMQP_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError)


def _from_incoming(incoming: AbstractIncomingMessage) -> Message:
    return Message(
        body=incoming.body,
        message_id=incoming.message_id,
        type=incoming.type,
        correlation_id=incoming.correlation_id,
        content_type=incoming.content_type,
        timestamp=int(incoming.timestamp.timestamp()) if incoming.timestamp else None,
        headers=dict(incoming.headers),
        reply_to=incoming.reply_to,
    )


def _to_outgoing(message: Message) -> aio_pika.Message:
    return aio_pika.Message(
        message.body,
        headers=message.headers,
        content_type=message.content_type,
        delivery_mode=_PERSISTENT if message.persistent else _TRANSIENT,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        reply_to=message.reply_to,
        expiration=message.expiration,
    )


class _RabbitDelivery(Delivery):
    __slots__ = ("_incoming",)

    def __init__(self, incoming: AbstractIncomingMessage) -> None:
        message = _from_incoming(incoming)
        super().__init__(
            message, incoming.exchange or "", incoming.routing_key or "", bool(incoming.redelivered)
        )
        self._incoming = incoming

    async def ack(self) -> None:
        try:
            await self._incoming.ack()
        except _AMQP_ERRORS as exc:
            # The channel is gone: the broker has already put the message back.
            log.warning("ack of %s lost (%s); it will be redelivered", self.message.message_id, exc)

    async def reject(self, requeue: bool) -> None:
        try:
            await self._incoming.reject(requeue=requeue)
        except _AMQP_ERRORS as exc:
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
        except _AMQP_ERRORS as exc:
            log.debug("cancel of consumer %s failed: %s", tag, exc)

    async def close(self) -> None:
        await self.cancel()
        if not self._channel.is_closed:
            try:
                await self._channel.close()
            except _AMQP_ERRORS as exc:
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
        self._rpc_channel: AbstractChannel | None = None
        self._rpc_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future[Message]] = {}

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    async def connect(self) -> None:
        where = redact(self.url)
        try:
            self._connection = await aio_pika.connect_robust(
                self.url,
                timeout=self.connect_timeout,
                client_properties={"connection_name": self.connection_name},
            )
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
            await self.close()
            reason = str(exc) or type(exc).__name__
            raise ConnectionFailed(f"cannot connect to RabbitMQ at {where}: {reason}") from exc
        except ValueError as exc:  # yarl/aiormq reject a malformed URL
            raise ConfigurationError(f"invalid broker URL {where}: {exc}") from exc

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._rpc_channel = None
        self._exchanges.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionFailed("the bus was closed"))
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

    async def declare_exchange(self, name: str, kind: str = FANOUT) -> None:
        try:
            self._exchanges[name] = await self.channel.declare_exchange(
                name, aio_pika.ExchangeType(kind), durable=True
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
        for exchange, key in spec.bindings:
            await queue.bind(exchange, routing_key=key)

    async def publish(
        self, message: Message, exchange: str, routing_key: str = "", *, mandatory: bool = False
    ) -> None:
        target = self._exchanges.get(exchange)
        if target is None:
            target = self._exchanges[exchange] = (
                self.channel.default_exchange
                if exchange == ""
                else await self.channel.get_exchange(exchange, ensure=False)
            )
        try:
            await target.publish(
                _to_outgoing(message),
                routing_key,
                mandatory=mandatory,
                timeout=self.publish_timeout,
            )
        except aiormq.exceptions.PublishError as exc:  # Basic.Return: no queue was bound
            raise Unroutable(f"no queue is bound for {routing_key or exchange!r}") from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishError(f"broker refused message to {exchange!r}: {exc}") from exc
        except TimeoutError as exc:
            raise PublishError(
                f"no confirm for message to {exchange!r} within {self.publish_timeout}s"
            ) from exc
        except _AMQP_ERRORS as exc:
            raise PublishError(f"could not publish to {exchange!r}: {exc}") from exc

    async def request(
        self, message: Message, exchange: str, routing_key: str, timeout: float
    ) -> Message:
        channel = await self._reply_channel()
        key = message.message_id or ""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        outgoing = _to_outgoing(message)
        outgoing.reply_to = REPLY_TO
        outgoing.expiration = timeout  # a request nobody took in time is dropped by the broker
        outgoing.delivery_mode = _TRANSIENT
        try:
            async with asyncio.timeout(timeout):
                target = await channel.get_exchange(exchange, ensure=False)
                try:
                    await target.publish(outgoing, routing_key, mandatory=True)
                except aiormq.exceptions.PublishError as exc:
                    raise NoResponder(f"nothing is bound for {routing_key!r}") from exc
                except _AMQP_ERRORS as exc:
                    raise PublishError(f"could not send request {routing_key!r}: {exc}") from exc
                return await future
        except TimeoutError:
            raise RequestTimeout(f"no reply within {timeout}s") from None
        finally:
            self._pending.pop(key, None)

    async def _reply_channel(self) -> AbstractChannel:
        """The channel that sends requests and consumes their replies (direct reply-to)."""
        async with self._rpc_lock:
            if self._rpc_channel is None:
                if self._connection is None:
                    raise ConnectionFailed("the RabbitMQ transport is not connected")
                channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                replies = await channel.get_queue(REPLY_TO, ensure=False)
                await replies.consume(self._on_reply, no_ack=True)
                self._rpc_channel = channel
            return self._rpc_channel

    async def _on_reply(self, incoming: AbstractIncomingMessage) -> None:
        future = self._pending.get(incoming.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(_from_incoming(incoming))

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
