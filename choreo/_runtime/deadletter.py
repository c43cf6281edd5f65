"""Dead-lettering: the copy of a failed message goes to its service's ``.dlq`` queue.

The copy keeps the original body and properties and adds the reason in headers (see
``wire.failure_headers``). It is published mandatory and confirmed, so a DLQ that is gone
cannot swallow it; only then is the original acknowledged (by ``settle.py``).

An event's dead letter also records its bucket (``wire.ROUTING_KEY_HEADER``), so that
``choreo dlq replay`` can route it to the partition that owns its key: the routing key it
was delivered with when that is a bucket, else (it came from the quarantine queue, or
through the delay levels, whose routing keys are not its bucket) the bucket the publisher
gave it, from its ordering key (``events.ordering_key_in``) or else its message id.
"""

from __future__ import annotations

from .. import topology
from ..events import ordering_key_in
from ..transports.base import Message, Transport
from ..wire import dead_letter

__all__ = ["routing_bucket", "send_to_dlq"]


async def send_to_dlq(
    transport: Transport,
    dlq: str,
    message: Message,
    *,
    error_type: str,
    error_message: str,
    attempts: int,
    service: str,
    event: str | None,
    traceback_text: str,
    routing_key: str = "",
) -> None:
    """Publish the dead-letter copy of ``message`` (delivered with ``routing_key``) to
    ``dlq``; raise ``ChoreoError`` when the broker did not take it."""
    copy = dead_letter(
        message,
        error_type=error_type,
        error_message=error_message,
        attempts=attempts,
        service=service,
        event=event,
        traceback_text=traceback_text,
        routing_key=None if message.reply_to else routing_bucket(message, routing_key),
    )
    await transport.publish(copy, "", dlq, mandatory=True)


def routing_bucket(message: Message, routing_key: str) -> str:
    """The bucket of the event ``message``, delivered with ``routing_key``."""
    if routing_key.isascii() and routing_key.isdigit() and int(routing_key) < topology.BUCKETS:
        return routing_key
    key = ordering_key_in(message.type or "", message.body)
    return topology.routing_key_of(key, message.message_id)
