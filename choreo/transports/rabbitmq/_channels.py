"""Closing a channel so that nothing can interrupt the close half-way.

aiormq answers a cancelled RPC by sending Channel.Close. When the RPC that was
cancelled is itself a Channel.Close, the broker gets a second Channel.Close for a
channel it has closed already, and RabbitMQ closes the whole connection for that
(``CHANNEL_ERROR - expected 'channel.open'``). Every consumer on the connection
loses its deliveries and every handler running then is cancelled. So a close
runs in a task of its own, which the caller's cancellation or timeout never
reaches; the caller only stops waiting for it.
"""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractChannel

from ._errors import AMQP_ERRORS

__all__ = ["CHANNEL_CLOSE_TIMEOUT", "close_channel"]

log = logging.getLogger("choreo.rabbitmq")

CHANNEL_CLOSE_TIMEOUT = 1.0  # seconds; a channel closes in milliseconds unless it is stuck

_closing: set[asyncio.Task[None]] = set()  # closes outlived by their callers


async def close_channel(channel: AbstractChannel, timeout: float = CHANNEL_CLOSE_TIMEOUT) -> None:
    """Close ``channel``, waiting up to ``timeout`` s. A close that takes longer (aiormq
    waits for the channel's delivery tasks) or whose caller is cancelled goes on in the
    background; it ends at the latest with the connection."""
    if channel.is_closed:
        return
    task = asyncio.get_running_loop().create_task(_close(channel))
    _closing.add(task)
    task.add_done_callback(_closing.discard)
    await asyncio.wait({task}, timeout=timeout)


async def _close(channel: AbstractChannel) -> None:
    try:
        await channel.close()
    except AMQP_ERRORS as exc:  # closed under it (by the broker, or with the connection)
        log.debug("closing a channel: %s", exc)
