"""Consuming from RabbitMQ: deliveries, batched acknowledgements, and resubscription.

Acks are batched without weakening at-least-once: a message is acknowledged only after
its handler finished, and one ``basic.ack(multiple=True)`` covers a run of consecutive
delivery tags that all finished. Tags that finish out of order are acknowledged one by
one at the same flush, so a slow handler never holds back the acks of the others (which
would exhaust the prefetch). A flush runs once per event-loop turn in which handlers
finished. After a reconnect the delivery tags of the old channel mean nothing: their
acks are dropped, and the broker redelivers those messages.

The consumer subscribes on aiormq's channel directly and subscribes again whenever
aio-pika's robust channel reopens (reconnect) or the broker cancels the subscription.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from aiormq.abc import AbstractChannel as Underlay
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from ...errors import ConnectionFailed
from ..base import Consumer, Delivery, OnCancelled, OnMessage
from ._amqp import from_delivered, from_incoming
from ._channels import close_channel
from ._errors import AMQP_ERRORS, translated

__all__ = ["IncomingDelivery", "RabbitConsumer"]

log = logging.getLogger("choreo.rabbitmq")


class _Acks:
    """Acknowledgements of one channel, flushed in batches."""

    def __init__(self) -> None:
        self.channel: Underlay | None = None
        self._done: set[int] = set()  # handled, ack not sent yet
        self._settled: set[int] = set()  # acked or rejected one by one
        self._upto = 0  # every tag <= this one is settled
        self._flush_task: asyncio.Task[None] | None = None

    def reset(self, channel: Underlay) -> None:
        self.channel = channel
        self._done.clear()
        self._settled.clear()
        self._upto = 0

    def _settled_already(self, tag: int) -> bool:
        """Settling a tag twice would close the channel (PRECONDITION_FAILED)."""
        return tag <= self._upto or tag in self._done or tag in self._settled

    def ack(self, channel: Underlay, tag: int) -> None:
        if channel is not self.channel or self._settled_already(tag):
            return  # a tag of a channel that is gone: the broker redelivers the message
        self._done.add(tag)
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def reject(self, channel: Underlay, tag: int, requeue: bool) -> None:
        if channel is not self.channel or channel.is_closed or self._settled_already(tag):
            return
        self._settled.add(tag)
        try:
            await channel.basic_reject(tag, requeue=requeue, wait=False)
        except AMQP_ERRORS as exc:
            log.warning("reject of delivery %d lost (%s); the broker will redeliver", tag, exc)

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(0)  # let every handler that finishes this turn join the batch
        finally:
            self._flush_task = None
        await self.flush()

    async def flush(self) -> None:
        channel = self.channel
        if channel is None or not self._done:
            return
        upto, last = self._upto, 0
        while True:
            following = upto + 1
            if following in self._done:
                self._done.discard(following)
                last = upto = following
            elif following in self._settled:
                self._settled.discard(following)
                upto = following
            else:
                break
        self._upto = upto
        stragglers = sorted(self._done)
        self._done.clear()
        self._settled.update(stragglers)
        try:
            if last:
                await channel.basic_ack(last, multiple=True, wait=False)
            for tag in stragglers:
                await channel.basic_ack(tag, wait=False)
        except AMQP_ERRORS as exc:
            log.warning("acks lost with the channel (%s); the broker will redeliver", exc)


class _RabbitDelivery(Delivery):
    __slots__ = ("_acks", "_channel", "_tag")

    def __init__(self, delivered: DeliveredMessage, acks: _Acks) -> None:
        deliver = delivered.delivery
        assert isinstance(deliver, Basic.Deliver)
        super().__init__(
            from_delivered(delivered),
            deliver.exchange or "",
            deliver.routing_key or "",
            bool(deliver.redelivered),
        )
        self._channel = delivered.channel
        self._tag = deliver.delivery_tag or 0
        self._acks = acks

    async def ack(self) -> None:
        self._acks.ack(self._channel, self._tag)

    async def reject(self, requeue: bool) -> None:
        await self._acks.reject(self._channel, self._tag, requeue)


class IncomingDelivery(Delivery):
    """A message taken with ``basic.get`` (the DLQ tools), settled through aio-pika."""

    __slots__ = ("_incoming",)

    def __init__(self, incoming: AbstractIncomingMessage) -> None:
        super().__init__(
            from_incoming(incoming),
            incoming.exchange or "",
            incoming.routing_key or "",
            bool(incoming.redelivered),
        )
        self._incoming = incoming

    async def ack(self) -> None:
        try:
            await self._incoming.ack()
        except AMQP_ERRORS as exc:  # the message stays where it was; say so in choreo's terms
            raise ConnectionFailed(f"ack lost with the channel: {exc}") from exc

    async def reject(self, requeue: bool) -> None:
        try:
            await self._incoming.reject(requeue=requeue)
        except AMQP_ERRORS as exc:
            raise ConnectionFailed(f"reject lost with the channel: {exc}") from exc


class RabbitConsumer(Consumer):
    """One subscription to a queue, on a robust channel of its own."""

    def __init__(
        self,
        channel: AbstractRobustChannel,
        queue: str,
        on_message: OnMessage,
        on_cancelled: OnCancelled | None = None,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._on_message = on_message
        self._acks = _Acks()
        self._tag: str | None = None
        self._cancelled = False
        self._paused = False
        self._on_cancelled = on_cancelled
        self._restoring: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._subscribe()
        self._channel.reopen_callbacks.add(self._on_reopen)

    async def _subscribe(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        if underlay is not self._acks.channel:  # a new channel: old tags mean nothing
            self._acks.reset(underlay)
        underlay.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        ok = await underlay.basic_consume(self._queue, self._deliver, no_ack=False)
        self._tag = ok.consumer_tag

    async def _deliver(self, delivered: DeliveredMessage) -> None:
        await self._on_message(_RabbitDelivery(delivered, self._acks))

    async def _on_reopen(self, *_: Any) -> None:
        if not self._cancelled and not self._paused:
            await self._subscribe()
            log.info("consuming %s again after a reconnect", self._queue)

    async def _on_broker_cancel(self, frame: Basic.Cancel) -> None:
        """The broker ended the subscription (queue deleted or moved). This runs inside
        aiormq's frame reader: calling the broker from here would deadlock it, so the
        consumer only marks itself paused and leaves the restoring to ``on_cancelled``,
        in a task of its own."""
        if self._cancelled or frame.consumer_tag != self._tag:
            return
        self._tag = None
        self._paused = True
        log.warning("the broker cancelled the consumer of %s", self._queue)
        if self._on_cancelled is not None:
            task = asyncio.get_running_loop().create_task(self._on_cancelled())
            self._restoring.add(task)
            task.add_done_callback(self._restoring.discard)

    async def cancel(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        for task in list(self._restoring):
            task.cancel()
        self._channel.reopen_callbacks.discard(self._on_reopen)
        channel, tag = self._acks.channel, self._tag
        if channel is None or tag is None or channel.is_closed:
            return
        try:
            await channel.basic_cancel(tag)
        except AMQP_ERRORS as exc:
            log.debug("cancel of consumer %s failed: %s", tag, exc)

    async def pause(self) -> None:
        self._paused = True
        channel, tag, self._tag = self._acks.channel, self._tag, None
        if channel is None or tag is None or channel.is_closed:
            return
        with translated(f"pausing the consumer of {self._queue!r}"):
            await channel.basic_cancel(tag)

    async def resume(self) -> None:
        if self._cancelled or not self._paused:
            return
        self._paused = False
        with translated(f"resuming the consumer of {self._queue!r}"):
            await self._subscribe()

    async def close(self) -> None:
        # no basic.cancel here: closing the channel gives the unsettled deliveries back
        # before the broker makes another consumer the single active one of the queue
        self._cancelled = True
        for task in list(self._restoring):
            task.cancel()
        self._channel.reopen_callbacks.discard(self._on_reopen)
        await self._acks.flush()
        # bounded: aiormq waits for the channel's delivery tasks, and a handler that
        # ignores its cancellation would hold the close (and the process) forever
        await close_channel(self._channel)
