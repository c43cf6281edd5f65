"""Messages on the wire (choreo ``Message`` <-> AMQP properties), and the connection.

Publishing and consuming use aiormq's frames directly: aio-pika's ``Message`` objects
cost more per message (a guarded ``__setattr__`` on every field) than the rest of the
hot path, and choreo needs none of their features.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.connection import Connection
from aio_pika.robust_connection import RobustConnection
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from yarl import URL

from ..base import Message
from ._codec_guard import OUT_OF_RANGE, UndecodableTable

__all__ = [
    "DEFAULT_HEARTBEAT",
    "REPLY_TO",
    "FailoverConnection",
    "from_delivered",
    "from_incoming",
    "properties",
]

REPLY_TO = "amq.rabbitmq.reply-to"
DEFAULT_HEARTBEAT = 10  # seconds; a silent (black-holed) broker is noticed after ~3 of them


def properties(message: Message) -> Basic.Properties:
    """The AMQP properties of ``message``."""
    return Basic.Properties(
        content_type=message.content_type,
        delivery_mode=2 if message.persistent else 1,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=None
        if message.timestamp is None
        else datetime.fromtimestamp(message.timestamp, UTC),
        message_type=message.type,
        reply_to=message.reply_to,
        expiration=None if message.expiration is None else str(int(message.expiration * 1000)),
        headers=message.headers or None,
    )


def _seconds(timestamp: datetime | None) -> int | None:
    if timestamp is None:
        return None
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return int(timestamp.timestamp())


def from_delivered(delivered: DeliveredMessage) -> Message:
    """The ``Message`` of a delivery (or a reply) as aiormq hands it over."""
    props = delivered.header.properties
    timestamp, headers, undecodable = props.timestamp, props.headers, None
    if timestamp is OUT_OF_RANGE or type(headers) is UndecodableTable:  # see _codec_guard
        problems = []
        if timestamp is OUT_OF_RANGE:
            problems.append("the timestamp property is out of range (seconds since 1970 expected)")
            timestamp = None
        if isinstance(headers, UndecodableTable):
            problems.append(headers.reason)
            headers = None
        undecodable = "; ".join(problems)
    return Message(
        body=delivered.body,
        message_id=props.message_id,
        type=props.message_type,
        correlation_id=props.correlation_id,
        content_type=props.content_type,
        timestamp=_seconds(timestamp),
        headers=headers or {},
        reply_to=props.reply_to,
        undecodable=undecodable,
    )


def from_incoming(incoming: AbstractIncomingMessage) -> Message:
    """The ``Message`` of an aio-pika message (``basic.get``, off the hot path)."""
    return Message(
        body=incoming.body,
        message_id=incoming.message_id,
        type=incoming.type,
        correlation_id=incoming.correlation_id,
        content_type=incoming.content_type,
        timestamp=_seconds(incoming.timestamp),
        headers=dict(incoming.headers),
        reply_to=incoming.reply_to,
    )


def _with_heartbeat(url: URL) -> URL:
    return url if "heartbeat" in url.query else url.update_query(heartbeat=DEFAULT_HEARTBEAT)


# True while a connection makes its first attempt (see FailoverConnection): what fails
# then is raised to the caller, who reports it, so the client libraries' log line about it
# is noise. The tasks that attempt starts inherit the flag, hence the exact message below.
_FIRST_ATTEMPT: ContextVar[bool] = ContextVar("choreo_first_connect_attempt", default=False)
_SOCKET_FAILED = "error when creating transport: %r"  # aiormq.connection, at ERROR


class _QuietFirstAttempt(logging.Filter):
    """Drops aiormq's "error when creating transport" during a first attempt only: the
    same line from a reconnect (the flag is False there) still gets through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == _SOCKET_FAILED and _FIRST_ATTEMPT.get())


logging.getLogger("aiormq.connection").addFilter(_QuietFirstAttempt())


class FailoverConnection(RobustConnection):
    """A robust connection over the nodes of a cluster: each (re)connect attempt takes the
    next URL, round robin. aio-pika's own takes one URL; this hooks its (private) connect
    step, checked below at import time so an aio-pika upgrade cannot break it silently.

    Until the first connect succeeded there is nothing to reconnect: aio-pika (with
    ``fail_fast``, its default) raises the first failure from ``connect()`` and stops, so
    its "Connection to ... closed. Reconnecting after 1 seconds." (logged when the failed
    attempt's socket closes) would be false, and is not logged; nor is aiormq's line about
    a socket that could not connect. The caller reports the failure in one error. Once
    connected, every later close and reconnect attempt is logged as aio-pika logs it."""

    def __init__(self, urls: list[str], **kwargs: Any) -> None:
        self._urls = [_with_heartbeat(URL(url)) for url in urls]
        self._turn = 0
        kwargs.setdefault("reconnect_interval", 1.0)
        super().__init__(self._urls[0], **kwargs)

    @property
    def has_connected(self) -> bool:
        """Whether a connect attempt succeeded once (aio-pika counts them when they do)."""
        return self.connection_attempt > 0

    async def _RobustConnection__connect_transport(self) -> None:
        self.url = self._urls[self._turn % len(self._urls)]
        self._turn += 1
        first = _FIRST_ATTEMPT.set(not self.has_connected)
        try:
            await super()._RobustConnection__connect_transport()  # type: ignore[misc]
        finally:
            _FIRST_ATTEMPT.reset(first)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if self.has_connected:
            await super()._on_connection_close(closing)  # logs, and arms the reconnect
        else:  # the first attempt failed: connect() raises it, nothing reconnects
            await Connection._on_connection_close(self, closing)


if not hasattr(RobustConnection, "_RobustConnection__connect_transport"):  # pragma: no cover
    raise ImportError("this aio-pika version has no RobustConnection.__connect_transport")
