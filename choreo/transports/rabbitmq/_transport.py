"""The RabbitMQ transport.

One robust connection per bus. Publishing uses one channel in publisher-confirm mode, so
many concurrent publishes are pipelined on it and each returns when its own confirm comes
back. Each consumer gets a channel of its own, with its own prefetch. Requests go out on a
channel of their own that also consumes RabbitMQ's direct reply-to pseudo-queue
(``amq.rabbitmq.reply-to``), as direct reply-to requires; replies are matched to pending
requests by correlation id. aio-pika's robust connection reconnects, re-declares what was
declared through it, and restores consumers. aio-pika and aiormq errors become choreo's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import AbstractChannel as Underlay
from aiormq.abc import DeliveredMessage

from ...config import redact, scrub
from ...errors import (
    ConfigurationError,
    ConnectionFailed,
    NoResponder,
    PublishError,
    RequestTimeout,
    Unroutable,
)
from ..base import FANOUT, Consumer, Delivery, Message, OnCancelled, OnMessage, QueueSpec, Transport
from ._amqp import REPLY_TO, FailoverConnection, from_delivered, properties
from ._channels import close_channel
from ._consumer import IncomingDelivery, RabbitConsumer
from ._errors import AMQP_ERRORS, refusal, translated

__all__ = ["RabbitMQTransport"]

log = logging.getLogger("choreo.rabbitmq")

MAX_PREFETCH = 65_535  # basic.qos carries the prefetch count in a short
DEFAULT_PUBLISH_WINDOW = 1024
CLOSE_TIMEOUT = 2.0  # seconds; a connection closes in milliseconds unless a channel is stuck


class RabbitMQTransport(Transport):
    """Transport to a RabbitMQ broker at ``url`` (``amqp://`` or ``amqps://``)."""

    def __init__(
        self,
        url: str,
        *,
        connection_name: str = "choreo",
        connect_timeout: float = 10.0,
        publish_timeout: float = 30.0,
        publish_window: int = DEFAULT_PUBLISH_WINDOW,
    ) -> None:
        self.url = url
        self.connection_name = connection_name
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        # publishes waiting for their confirm at once; the others wait for a slot first,
        # and their publish_timeout starts only then
        self._window = asyncio.Semaphore(publish_window)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._declare_channel: AbstractChannel | None = None
        self._rpc_channel: Underlay | None = None
        self._rpc_on: object = None  # the aiormq connection the reply channel belongs to
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
                problem = refusal(exc, urls[start], self.connect_timeout)
                if problem is None:  # the library's words, which may quote the URL
                    problem = scrub(str(exc), self.url) or type(exc).__name__
                problems.append(f"{where}: {problem}")
                continue
            except ValueError as exc:  # yarl/aiormq reject a malformed URL
                problem = scrub(str(exc), self.url)
                raise ConfigurationError(f"invalid broker URL {where}: {problem}") from exc
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
        self._rpc_channel = self._declare_channel = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionFailed("the bus was closed"))
        if connection is not None and not connection.is_closed:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await connection.close()
            except (*AMQP_ERRORS, TimeoutError) as exc:  # type: ignore[misc]
                log.debug("closing the connection failed: %r", exc)

    @property
    def channel(self) -> AbstractChannel:
        if self._channel is None:
            raise ConnectionFailed("the RabbitMQ transport is not connected")
        return self._channel

    async def _declaring(self) -> AbstractChannel:
        """The channel declarations go through: a refused declaration closes it (and only
        it), so it is reopened on the next use."""
        channel = self._declare_channel
        if channel is None or channel.is_closed:
            if self._connection is None:
                raise ConnectionFailed("the RabbitMQ transport is not connected")
            with translated("the declaring channel"):
                channel = self._declare_channel = await self._connection.channel()
        return channel

    async def declare_exchange(self, name: str, kind: str = FANOUT) -> None:
        channel = await self._declaring()
        with translated(f"exchange {name!r}"):
            await channel.declare_exchange(name, aio_pika.ExchangeType(kind), durable=True)

    async def exchange_exists(self, name: str) -> bool:
        """A passive declare on a channel of its own: NOT_FOUND closes that channel."""
        if name == "":
            return True
        channel = await self.channel_for_consumer(0)
        try:
            with translated(f"exchange {name!r}"):
                underlay = await channel.get_underlay_channel()
                try:
                    await underlay.exchange_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return False
            return True
        finally:
            await close_channel(channel)

    async def declare_queue(self, spec: QueueSpec) -> None:
        channel = await self._declaring()
        with translated(f"queue {spec.name!r}"):
            queue = await channel.declare_queue(
                spec.name, durable=True, arguments=dict(spec.arguments) or None
            )
        for exchange, key in spec.bindings:
            channel = await self._declaring()
            with translated(f"binding of queue {spec.name!r} to {exchange!r}"):
                await queue.bind(exchange, routing_key=key)

    async def bind_exchange(self, destination: str, source: str, routing_key: str = "") -> None:
        with translated(f"binding of exchange {destination!r} to {source!r}"):
            underlay = await (await self._declaring()).get_underlay_channel()
            await underlay.exchange_bind(destination, source, routing_key)

    async def unbind_queue(self, queue: str, exchange: str, routing_key: str = "") -> None:
        channel = await self._declaring()
        with translated(f"binding of queue {queue!r} to {exchange!r}"):
            underlay = await channel.get_underlay_channel()
            await underlay.queue_declare(queue, passive=True)  # RabbitMQ unbinds from nothing
            await underlay.queue_unbind(queue, exchange, routing_key)
            # aio-pika binds again after a reconnect what its queue objects remember (one per
            # declaration on this channel): each forgets it (`_queues` is not public)
            for known in tuple(getattr(channel, "_queues", {}).get(queue, ())):
                await known.unbind(exchange, routing_key)

    async def publish(
        self, message: Message, exchange: str, routing_key: str = "", *, mandatory: bool = False
    ) -> None:
        """Publish and wait for the confirm, through reconnections, up to ``publish_timeout``.

        A publish whose confirm was lost with the connection is sent again after the
        reconnect (at-least-once: the broker may then hold it twice). A nack reopens the
        channel before the next try: on RabbitMQ 3.10 a channel whose first publish met a
        quorum-queue leader election keeps being nacked.

        At most ``publish_window`` publishes are in flight at once; the others wait for a
        slot (backpressure), and their timeout counts from then: it bounds the wait for
        the broker, not the queueing in this process.
        """
        await self._window.acquire()  # (not `async with`: one frame less per publish)
        try:
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
                except aiormq.exceptions.ChannelNotFoundEntity as exc:  # the channel is closed now
                    await self._reopen_publish_channel(channel)
                    raise PublishError(f"cannot publish to {exchange!r}: {exc}") from exc
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
        finally:
            self._window.release()

    async def _reopen_publish_channel(self, failed: AbstractChannel) -> None:
        if self._channel is not failed or self._connection is None:
            return  # another publish reopened it already
        await close_channel(failed)
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
        return (await self._counts(queue))[0]

    async def consumer_count(self, queue: str) -> int:
        return (await self._counts(queue))[1]

    async def _counts(self, queue: str) -> tuple[int, int]:
        """Messages ready in ``queue`` and its consumers (a passive declare)."""
        async with self._short_channel(queue, 1) as channel:
            declared = await channel.declare_queue(queue, passive=True)
        result = declared.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)

    @contextlib.asynccontextmanager
    async def _short_channel(self, queue: str, prefetch: int) -> AsyncIterator[AbstractChannel]:
        """A channel for one operation on ``queue``, closed afterwards (which gives back
        what was fetched and not settled); errors translated."""
        channel = await self.channel_for_consumer(prefetch)
        try:
            with translated(f"queue {queue!r}"):
                yield channel
        finally:
            await close_channel(channel)

    @contextlib.asynccontextmanager
    async def fetch(self, queue: str, limit: int) -> AsyncIterator[list[Delivery]]:
        # basic.get ignores the prefetch, and a prefetch over 65,535 does not fit the frame
        async with self._short_channel(queue, 0) as channel:
            found = await channel.declare_queue(queue, passive=True)
            deliveries: list[Delivery] = []
            while len(deliveries) < limit:
                incoming = await found.get(no_ack=False, fail=False)
                if incoming is None:
                    break
                deliveries.append(IncomingDelivery(incoming))
            yield deliveries  # closing the channel returns what was not settled, in order

    async def purge(self, queue: str) -> int:
        async with self._short_channel(queue, 1) as channel:
            found = await channel.declare_queue(queue, passive=True)
            result = await found.purge()
        return int(result.message_count or 0)

    async def delete_queue(self, queue: str) -> None:
        channel = await self._declaring()
        with translated(f"queue {queue!r}"):
            await channel.queue_delete(queue)

    async def request(
        self, message: Message, exchange: str, routing_key: str, timeout: float
    ) -> Message:
        key = message.message_id or ""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        # not persistent, and dropped by the broker when nobody took it in time
        props = properties(
            dataclasses.replace(message, reply_to=REPLY_TO, expiration=timeout, persistent=False)
        )
        try:
            async with asyncio.timeout(timeout):
                channel = await self._reply_channel()
                try:
                    await channel.basic_publish(
                        message.body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=props,
                        mandatory=True,
                    )
                except aiormq.exceptions.PublishError as exc:
                    raise NoResponder(f"nothing is bound for {routing_key!r}") from exc
                except (*AMQP_ERRORS, asyncio.CancelledError) as exc:  # type: ignore[misc]
                    task = asyncio.current_task()
                    if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                        raise
                    raise ConnectionFailed(
                        f"request {routing_key!r} not sent, the connection dropped: {exc}"
                    ) from exc
                return await future
        except TimeoutError:
            raise RequestTimeout(f"no reply within {timeout}s") from None
        finally:
            self._pending.pop(key, None)

    async def _reply_channel(self) -> Underlay:
        """The channel that sends requests and consumes their replies (direct reply-to),
        on the current connection: after a reconnect a new one is opened, and its reply
        consumer is in place before any request goes out on it (RabbitMQ refuses a
        request on a channel without one, and closes the channel)."""
        async with self._rpc_lock:
            connection = self._connection
            if connection is None:
                raise ConnectionFailed("the RabbitMQ transport is not connected")
            await connection.connected.wait()  # reconnecting: the caller's timeout bounds it
            underlay = connection.transport.connection if connection.transport else None
            if underlay is None:
                raise ConnectionFailed("the connection to RabbitMQ is being restored")
            channel = self._rpc_channel
            if channel is not None and self._rpc_on is underlay and not channel.is_closed:
                return channel
            with translated("the direct reply-to consumer"):
                channel = await underlay.channel(publisher_confirms=True)
                await channel.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
            self._rpc_channel, self._rpc_on = channel, underlay
            return channel

    async def _on_reply(self, delivered: DeliveredMessage) -> None:
        future = self._pending.get(delivered.header.properties.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(from_delivered(delivered))

    async def consume(
        self,
        queue: str,
        on_message: OnMessage,
        prefetch: int,
        on_cancelled: OnCancelled | None = None,
    ) -> Consumer:
        channel = await self.channel_for_consumer(prefetch)
        consumer = RabbitConsumer(channel, queue, on_message, on_cancelled)
        try:
            with translated(f"cannot consume queue {queue!r}"):
                await consumer.start()
        except BaseException:
            await close_channel(channel)
            raise
        return consumer

    async def channel_for_consumer(self, prefetch: int) -> AbstractRobustChannel:
        """A channel of its own, with ``prefetch``; reopened after a reconnect."""
        if self._connection is None:
            raise ConnectionFailed("the RabbitMQ transport is not connected")
        with translated("a new channel"):
            channel = await self._connection.channel()
            try:
                if prefetch:
                    await channel.set_qos(prefetch_count=min(prefetch, MAX_PREFETCH))
            except BaseException:  # closed, or the robust connection would reopen it
                await close_channel(channel)
                raise
        assert isinstance(channel, AbstractRobustChannel)
        return channel
