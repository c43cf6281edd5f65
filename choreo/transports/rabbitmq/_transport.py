"""The RabbitMQ transport.

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
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from ...config import redact
from ...errors import (
    ConfigurationError,
    ConnectionFailed,
    NoResponder,
    PublishError,
    RequestTimeout,
    Unroutable,
)
from ..base import FANOUT, Consumer, Delivery, Message, OnMessage, QueueSpec, Transport
from ._consumer import IncomingDelivery, RabbitConsumer
from ._wire import AMQP_ERRORS, REPLY_TO, FailoverConnection, from_incoming, properties

__all__ = ["RabbitMQTransport"]

log = logging.getLogger("choreo.rabbitmq")


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
        self._rpc_channel: AbstractChannel | None = None
        self._rpc_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future[Message]] = {}

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    async def connect(self) -> None:
        """Connect to the first URL that answers; later reconnects go round the list."""
        urls = [u.strip() for u in self.url.split(",") if u.strip()]
        problems = []
        for start in range(len(urls)):
            where = redact(urls[start])
            try:
                connection = FailoverConnection(
                    urls[start:] + urls[:start],
                    client_properties={"connection_name": self.connection_name},
                )
                await connection.connect(timeout=self.connect_timeout)
            except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
                problems.append(f"{where}: {str(exc) or type(exc).__name__}")
                continue
            except ValueError as exc:  # yarl/aiormq reject a malformed URL
                raise ConfigurationError(f"invalid broker URL {where}: {exc}") from exc
            self._connection = connection
            try:
                self._channel = await self._publish_channel()
            except AMQP_ERRORS as exc:
                await self.close()
                raise ConnectionFailed(f"cannot open a channel on {where}: {exc}") from exc
            return
        raise ConnectionFailed("cannot connect to RabbitMQ at " + "; ".join(problems))

    async def _publish_channel(self) -> AbstractChannel:
        if self._connection is None:
            raise ConnectionFailed("the RabbitMQ transport is not connected")
        return await self._connection.channel(publisher_confirms=True, on_return_raises=True)

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._rpc_channel = None
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
            await self.channel.declare_exchange(name, aio_pika.ExchangeType(kind), durable=True)
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
        """Publish and wait for the confirm, through reconnections, up to ``publish_timeout``.

        A publish whose confirm was lost with the connection is sent again after the
        reconnect (at-least-once: the broker may then hold it twice). A nack reopens the
        channel before the next try: on RabbitMQ 3.10 a channel whose first publish met a
        quorum-queue leader election keeps being nacked.
        """
        props = properties(message)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        last: BaseException | None = None
        while (remaining := deadline - loop.time()) > 0:
            channel = self.channel
            try:
                async with asyncio.timeout(remaining):
                    underlay = await channel.get_underlay_channel()
                    await underlay.basic_publish(
                        message.body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=props,
                        mandatory=mandatory,
                    )
                return
            except aiormq.exceptions.PublishError as exc:  # Basic.Return: no queue was bound
                raise Unroutable(f"no queue is bound for {routing_key or exchange!r}") from exc
            except aio_pika.exceptions.DeliveryError as exc:  # Basic.Nack
                last = exc
                await self._reopen_publish_channel(channel)
            except TimeoutError:
                break
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                last = exc  # aiormq cancels in-flight publishes when it finds the peer dead
            except AMQP_ERRORS as exc:
                last = exc
            await self._wait_connected(deadline)
        reason = f": {type(last).__name__}: {last}" if last else ""
        raise PublishError(
            f"no confirm for a message to {exchange or routing_key!r} "
            f"within {self.publish_timeout}s{reason}"
        )

    async def _reopen_publish_channel(self, failed: AbstractChannel) -> None:
        if self._channel is not failed or self._connection is None:
            return  # another publish reopened it already
        with contextlib.suppress(*AMQP_ERRORS):
            await failed.close()
        try:
            self._channel = await self._publish_channel()
        except AMQP_ERRORS as exc:
            log.warning("reopening the publish channel failed: %s", exc)

    async def _wait_connected(self, deadline: float) -> None:
        """A short pause, then wait until the robust connection is back (or the deadline)."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
        if self._connection is None:
            raise ConnectionFailed("the RabbitMQ transport is closed")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await self._connection.connected.wait()

    async def queue_size(self, queue: str) -> int:
        channel = await self.channel_for_consumer(1)
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigurationError(f"no queue {queue!r} on the broker") from exc
        finally:
            if not channel.is_closed:
                await channel.close()
        return int(declared.declaration_result.message_count or 0)

    @contextlib.asynccontextmanager
    async def fetch(self, queue: str, limit: int) -> AsyncIterator[list[Delivery]]:
        channel = await self.channel_for_consumer(limit)
        try:
            try:
                found = await channel.declare_queue(queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                raise ConfigurationError(f"no queue {queue!r} on the broker") from exc
            deliveries: list[Delivery] = []
            while len(deliveries) < limit:
                incoming = await found.get(no_ack=False, fail=False)
                if incoming is None:
                    break
                deliveries.append(IncomingDelivery(incoming))
            yield deliveries
        finally:  # closing the channel returns what was not settled, in order
            if not channel.is_closed:
                await channel.close()

    async def purge(self, queue: str) -> int:
        channel = await self.channel_for_consumer(1)
        try:
            found = await channel.declare_queue(queue, passive=True)
            result = await found.purge()
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigurationError(f"no queue {queue!r} on the broker") from exc
        finally:
            if not channel.is_closed:
                await channel.close()
        return int(result.message_count or 0)

    async def request(
        self, message: Message, exchange: str, routing_key: str, timeout: float
    ) -> Message:
        channel = await self._reply_channel()
        key = message.message_id or ""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        # not persistent, and dropped by the broker when nobody took it in time
        props = properties(
            dataclasses.replace(message, reply_to=REPLY_TO, expiration=timeout, persistent=False)
        )
        try:
            async with asyncio.timeout(timeout):
                underlay = await channel.get_underlay_channel()
                try:
                    await underlay.basic_publish(
                        message.body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=props,
                        mandatory=True,
                    )
                except aiormq.exceptions.PublishError as exc:
                    raise NoResponder(f"nothing is bound for {routing_key!r}") from exc
                except AMQP_ERRORS as exc:
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
                replies = await channel.declare_queue(REPLY_TO, passive=True)
                await replies.consume(self._on_reply, no_ack=True)
                self._rpc_channel = channel
            return self._rpc_channel

    async def _on_reply(self, incoming: AbstractIncomingMessage) -> None:
        future = self._pending.get(incoming.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(from_incoming(incoming))

    async def consume(self, queue: str, on_message: OnMessage, prefetch: int) -> Consumer:
        channel = await self.channel_for_consumer(prefetch)
        consumer = RabbitConsumer(channel, queue, on_message)
        try:
            await consumer.start()
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            with contextlib.suppress(*AMQP_ERRORS):
                await channel.close()
            raise ConfigurationError(f"cannot consume {queue!r}: no such queue") from exc
        return consumer

    async def channel_for_consumer(self, prefetch: int) -> AbstractRobustChannel:
        """A channel of its own, with ``prefetch``; reopened after a reconnect."""
        if self._connection is None:
            raise ConnectionFailed("the RabbitMQ transport is not connected")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        assert isinstance(channel, AbstractRobustChannel)
        return channel
