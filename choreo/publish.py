"""Publish one event given as JSON, without its class: what ``choreo publish`` does.

The message follows the wire contract as ``Bus.publish`` would send it: the JSON object as
the body, ``content_type=application/json``, persistent, a new ``message_id`` (uuid hex),
``timestamp``, ``type=<event name>``, to the event's durable fanout exchange (declared if
missing), ``mandatory``, confirmed by the broker. The payload is not validated against any
model: consumers validate what they receive (an invalid one is dead-lettered).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import topology
from .errors import ConfigurationError
from .events import _NAME_RE, CONTENT_TYPE
from .transports.base import FANOUT, Message

if TYPE_CHECKING:
    from .bus import Bus

__all__ = ["message_for", "publish_json", "read_payload"]


def read_payload(argument: str, stdin: TextIO | None = None) -> dict[str, Any]:
    """The JSON object in ``argument``, or in the file ``@PATH`` (``@-``: standard input).

    ``ConfigurationError`` with one line saying what is wrong: an unreadable file, text
    that is not JSON, JSON that is not an object.
    """
    source = "the payload"
    text = argument
    if argument.startswith("@"):
        path = argument[1:]
        source = path
        try:
            if path == "-":
                source = "standard input"
                text = (stdin or sys.stdin).read()
            else:
                text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read {path!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"{path!r} is not UTF-8 text: {exc.reason}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"{source} must be a JSON object (an event's fields), not {type(value).__name__}"
        )
    return value


def message_for(
    event_name: str, payload: dict[str, Any], *, correlation_id: str | None = None
) -> Message:
    """The wire message of an event called ``event_name`` whose fields are ``payload``."""
    if not isinstance(event_name, str) or not _NAME_RE.match(event_name):
        raise ConfigurationError(
            f"invalid event name {event_name!r}: use letters, digits, '_', '.' and '-', "
            "starting with a letter or digit (e.g. sku_received)"
        )
    return Message(
        body=json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode(),
        message_id=uuid.uuid4().hex,
        type=event_name,
        correlation_id=correlation_id,
        content_type=CONTENT_TYPE,
        timestamp=int(time.time()),
        persistent=True,
    )


async def publish_json(
    bus: Bus, event_name: str, payload: dict[str, Any], *, correlation_id: str | None = None
) -> str:
    """Publish ``payload`` as the event ``event_name`` on ``bus`` (connected); return the
    message id once the broker confirmed it.

    Raises ``Unroutable`` when no queue is bound to the event's exchange: the broker
    confirmed the message, but nobody will ever receive it.
    """
    message = message_for(event_name, payload, correlation_id=correlation_id)
    exchange = topology.exchange_name(bus.namespace, event_name)
    await bus.transport.declare_exchange(exchange, FANOUT)
    bus.declared_exchanges.add(exchange)
    await bus.transport.publish(message, exchange, mandatory=True)
    assert message.message_id is not None
    return message.message_id
