"""Dead-lettering: the copy of a failed message goes to its service's ``.dlq`` queue.

The copy keeps the original body and properties and adds the reason in headers (see
``wire.failure_headers``). It is published mandatory and confirmed, so a DLQ that is gone
cannot swallow it; only then is the original acknowledged (by ``settle.py``).
"""

from __future__ import annotations

from ..transports.base import Message, Transport
from ..wire import dead_letter

__all__ = ["send_to_dlq"]


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
) -> None:
    """Publish the dead-letter copy of ``message`` to ``dlq``; raise ``ChoreoError`` when the
    broker did not take it."""
    copy = dead_letter(
        message,
        error_type=error_type,
        error_message=error_message,
        attempts=attempts,
        service=service,
        event=event,
        traceback_text=traceback_text,
    )
    await transport.publish(copy, "", dlq, mandatory=True)
