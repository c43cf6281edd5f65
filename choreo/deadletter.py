"""Dead letters: the copy of a failed message that goes to its service's ``.dlq`` queue.

The copy keeps the original body and properties and adds headers saying why it failed:
``x-choreo-error-type``, ``x-choreo-error-message``, ``x-choreo-traceback`` (truncated, as
large headers break AMQP frames), ``x-choreo-attempts``, ``x-choreo-service``,
``x-choreo-event`` and ``x-choreo-failed-at`` (ISO 8601, UTC).
"""

from __future__ import annotations

import dataclasses
import traceback
from datetime import UTC, datetime

from .transports.base import Message

__all__ = [
    "ERROR_HEADERS",
    "EVENT_HEADER",
    "MAX_ERROR_MESSAGE",
    "MAX_TRACEBACK",
    "dead_letter",
    "for_replay",
    "format_traceback",
]

EVENT_HEADER = "x-choreo-event"
ERROR_HEADERS = (
    "x-choreo-error-type",
    "x-choreo-error-message",
    "x-choreo-traceback",
    "x-choreo-attempts",
    "x-choreo-attempt",
    "x-choreo-service",
    "x-choreo-failed-at",
)
MAX_TRACEBACK = 4096
MAX_ERROR_MESSAGE = 1024


def format_traceback(exc: BaseException) -> str:
    """The traceback of ``exc``, keeping its end (where it was raised) within the limit."""
    text = "".join(traceback.format_exception(exc))
    if len(text) > MAX_TRACEBACK:
        text = "...(truncated)\n" + text[-(MAX_TRACEBACK - 16) :]
    return text


def dead_letter(
    message: Message,
    *,
    error_type: str,
    error_message: str,
    attempts: int,
    service: str,
    event: str | None,
    traceback_text: str = "",
) -> Message:
    """The dead-letter copy of ``message``, with the reason in its headers."""
    headers = dict(message.headers)
    headers.update(
        {
            "x-choreo-error-type": error_type,
            "x-choreo-error-message": error_message[:MAX_ERROR_MESSAGE],
            "x-choreo-traceback": traceback_text[:MAX_TRACEBACK],
            "x-choreo-attempts": attempts,
            "x-choreo-service": service,
            EVENT_HEADER: event or "",
            "x-choreo-failed-at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    )
    return dataclasses.replace(message, headers=headers)


def for_replay(message: Message) -> Message:
    """The dead letter without its failure headers (attempts start again at 1); it keeps
    ``x-choreo-event`` so a message that had no ``type`` is still dispatched."""
    headers = {k: v for k, v in message.headers.items() if k not in ERROR_HEADERS}
    return dataclasses.replace(message, headers=headers)
