"""Messages on the wire (choreo ``Message`` <-> AMQP properties), and the connection.

Publishing and consuming use aiormq's frames directly: aio-pika's ``Message`` objects
cost more per message (a guarded ``__setattr__`` on every field) than the rest of the
hot path, and choreo needs none of their features.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage
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


class FailoverConnection(RobustConnection):
    """A robust connection over the nodes of a cluster: each (re)connect attempt takes the
    next URL, round robin. aio-pika's own takes one URL; this hooks its (private) connect
    step, checked below at import time so an aio-pika upgrade cannot break it silently."""

    def __init__(self, urls: list[str], **kwargs: Any) -> None:
        self._urls = [_with_heartbeat(URL(url)) for url in urls]
        self._turn = 0
        kwargs.setdefault("reconnect_interval", 1.0)
        super().__init__(self._urls[0], **kwargs)

    async def _RobustConnection__connect_transport(self) -> None:
        self.url = self._urls[self._turn % len(self._urls)]
        self._turn += 1
        await super()._RobustConnection__connect_transport()  # type: ignore[misc]


if not hasattr(RobustConnection, "_RobustConnection__connect_transport"):  # pragma: no cover
    raise ImportError("this aio-pika version has no RobustConnection.__connect_transport")
