"""The wire contract: what a choreo message looks like on the broker, in one module.

Every header name, the content type, the name rules, how an event becomes a message and
back, the error reply of a failed request (both directions) and the headers of a dead
letter (written and read) live here; nothing else in choreo spells a header name.

An event is one AMQP message: the JSON of the event as the body, ``content_type``
``application/json``, persistent, a fresh ``message_id`` (uuid hex), ``timestamp``
(seconds), ``type`` = the event name, ``correlation_id`` of the conversation (the first
message of a chain gets its own ``message_id``; follow-ups carry it on), and headers:

* ``x-causation-id``: the ``message_id`` of the message whose handler published this one
* ``x-choreo-source``: the service whose handler published it
* ``x-choreo-attempt``: the attempt a message back from a retry queue is on (2, 3, ...)
* ``x-choreo-event``: the event a retried or dead-lettered message was handled as
* ``x-choreo-crashes``: how many times a quarantined message was being handled, alone,
  when its worker died
* ``x-choreo-handed-back``: how many times processes of the service with no handler for the
  message gave it back to the queue; ``x-choreo-exchange``: the exchange it came through
  (on a delayed message: its destination, which the delay levels deliver it to)
* dead letters add ``x-choreo-error-type``, ``-error-message``, ``-traceback``,
  ``-attempts``, ``-service``, ``-failed-at`` (ISO 8601, UTC) and, for an event,
  ``x-choreo-routing-key``: its bucket, the routing key a replay sends it on with

A failed request is answered with ``type`` = ``choreo.error``, the error in the
``x-choreo-error-type``/``-error-message``/``-service`` headers and in the JSON body.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import traceback
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ._headers import sendable
from .errors import ConfigurationError
from .transports.base import Message

# fmt: off
__all__ = [
    "ATTEMPTS_HEADER", "ATTEMPT_HEADER", "BCC_HEADER", "CAUSATION_HEADER", "CONTENT_TYPE",
    "CRASHES_HEADER", "DEATH_HEADER", "ERROR_MESSAGE_HEADER", "ERROR_TYPE", "ERROR_TYPE_HEADER",
    "EVENT_HEADER",
    "EXCHANGE_HEADER", "FAILED_AT_HEADER", "HANDED_BACK_HEADER", "MAX_ERROR_MESSAGE",
    "MAX_TRACEBACK", "NAME_RE", "PREVIEW", "ROUTING_KEY_HEADER", "SANITIZED_HEADER",
    "SERVICE_HEADER", "SOURCE_HEADER", "TRACEBACK_HEADER", "DeadLetter", "Undecodable",
    "attempt_of", "causation_of", "check_name", "crashes_of", "dead_letter", "decode", "encode",
    "encode_json", "error_reply", "failure_headers", "for_replay", "format_traceback",
    "handbacks_of", "handed_back", "handled_as", "read_error_reply", "retry_copy",
    "routed_through", "routing_key_died_with", "source_of", "with_crashes",
]
# fmt: on

CONTENT_TYPE = "application/json"
ERROR_TYPE = "choreo.error"  # the ``type`` of an error reply

CAUSATION_HEADER = "x-causation-id"
SOURCE_HEADER = "x-choreo-source"
ATTEMPT_HEADER = "x-choreo-attempt"
EVENT_HEADER = "x-choreo-event"
CRASHES_HEADER = "x-choreo-crashes"
HANDED_BACK_HEADER = "x-choreo-handed-back"  # times processes without its handler gave it back
EXCHANGE_HEADER = "x-choreo-exchange"  # a handed-back copy's exchange, a delayed message's
DEATH_HEADER = "x-death"  # RabbitMQ's: why the broker dead-lettered a message
BCC_HEADER = "BCC"  # RabbitMQ's: more routing keys, not delivered (a delayed message's bucket)
ERROR_TYPE_HEADER = "x-choreo-error-type"
ERROR_MESSAGE_HEADER = "x-choreo-error-message"
TRACEBACK_HEADER = "x-choreo-traceback"
ATTEMPTS_HEADER = "x-choreo-attempts"
SERVICE_HEADER = "x-choreo-service"
FAILED_AT_HEADER = "x-choreo-failed-at"
ROUTING_KEY_HEADER = "x-choreo-routing-key"  # a dead event's bucket: where a replay routes it
SANITIZED_HEADER = "x-choreo-sanitized"  # what a copy had to change to be sendable

# what a dead letter adds, and a replay takes away (x-choreo-event stays: it dispatches)
# fmt: off
_FAILURE_HEADERS = frozenset((
    ERROR_TYPE_HEADER, ERROR_MESSAGE_HEADER, TRACEBACK_HEADER, ATTEMPTS_HEADER, ATTEMPT_HEADER,
    CRASHES_HEADER, SERVICE_HEADER, FAILED_AT_HEADER, ROUTING_KEY_HEADER,
))
# fmt: on

MAX_TRACEBACK = 4096  # large headers break AMQP frames
MAX_ERROR_MESSAGE = 1024

M = TypeVar("M", bound=BaseModel)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_NAME_RULE = "use letters, digits, '_', '.' and '-', starting with a letter or digit"


def check_name(what: str, name: object, *, where: str = "", example: str = "") -> str:
    """``name`` if it is a valid event, request or service name, else ``ConfigurationError``."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        hint = f" (e.g. {example})" if example else ""
        at = f" for {where}" if where else ""
        raise ConfigurationError(f"invalid {what} {name!r}{at}: {_NAME_RULE}{hint}")
    return name


# -- events -----------------------------------------------------------------------------


def _message(
    body: bytes,
    name: str,
    correlation_id: str | None,
    causation_id: str | None,
    headers: Mapping[str, Any] | None,
) -> Message:
    message_id = uuid.uuid4().hex
    if correlation_id is None:  # the first message of a chain: the chain's id is its own
        correlation_id = message_id
    all_headers: dict[str, Any] = dict(headers) if headers else {}
    if causation_id is not None:
        all_headers[CAUSATION_HEADER] = causation_id
    return Message(
        body=body,
        message_id=message_id,
        type=name,
        correlation_id=correlation_id,
        content_type=CONTENT_TYPE,
        timestamp=int(time.time()),
        headers=all_headers,
    )


def encode(
    event: BaseModel,
    *,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> Message:
    """The message of ``event`` (an instance of a ``choreo.Event`` subclass)."""
    name = getattr(type(event), "__event_name__", None)
    if not isinstance(event, BaseModel) or not isinstance(name, str):
        raise ConfigurationError(f"expected an instance of a choreo.Event subclass, got {event!r}")
    body = event.__pydantic_serializer__.to_json(event)
    return _message(body, name, correlation_id, causation_id, headers)


def encode_json(
    name: str,
    payload: Mapping[str, Any],
    *,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> Message:
    """The message of an event called ``name`` whose fields are ``payload``, unvalidated
    (what ``choreo publish`` sends)."""
    check_name("event name", name, example="sku_received")
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return _message(body, name, correlation_id, causation_id, headers)


class Undecodable(Exception):
    """A body that no retry can turn into the expected event; ``kind`` names why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def decode(model: type[M], message: Message, what: str) -> M:
    """The ``model`` in ``message``'s body, or ``Undecodable`` (content type, JSON, fields)."""
    content_type = message.content_type
    if content_type and content_type.split(";", 1)[0].strip().lower() != CONTENT_TYPE:
        raise Undecodable("UnsupportedContentType", f"content type {content_type!r} is not JSON")
    try:
        return model.model_validate_json(message.body)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise Undecodable("InvalidJSON", f"body is not valid JSON: {exc}") from exc
        raise Undecodable("ValidationError", f"invalid {what}: {exc}") from exc


# -- error replies ----------------------------------------------------------------------


def error_reply(request: Message, service: str, error_type: str, error_message: str) -> Message:
    """The reply that tells a requester its request failed, and why."""
    body = {"error": {"type": error_type, "message": error_message, "service": service}}
    return Message(
        body=json.dumps(body).encode(),
        type=ERROR_TYPE,
        correlation_id=request.message_id,
        content_type=CONTENT_TYPE,
        timestamp=int(time.time()),
        headers={
            ERROR_TYPE_HEADER: error_type,
            ERROR_MESSAGE_HEADER: error_message[:MAX_ERROR_MESSAGE],
            SERVICE_HEADER: service,
            CAUSATION_HEADER: request.message_id,
        },
        persistent=False,
    )


def read_error_reply(reply: Message) -> tuple[str, str, str] | None:
    """(error type, message, service) of an error reply; ``None`` for a normal reply."""
    if reply.type != ERROR_TYPE:
        return None
    headers = reply.headers
    return (
        str(headers.get(ERROR_TYPE_HEADER, "Error")),
        str(headers.get(ERROR_MESSAGE_HEADER, "")),
        str(headers.get(SERVICE_HEADER, "")),
    )


# -- dead letters -----------------------------------------------------------------------


def format_traceback(exc: BaseException) -> str:
    """The traceback of ``exc``, keeping its end (where it was raised) within the limit."""
    text = "".join(traceback.format_exception(exc))
    if len(text) > MAX_TRACEBACK:
        text = "...(truncated)\n" + text[-(MAX_TRACEBACK - 16) :]
    return text


def failure_headers(
    *,
    error_type: str,
    error_message: str,
    attempts: int,
    service: str,
    event: str | None,
    traceback_text: str = "",
    routing_key: str | None = None,
) -> dict[str, Any]:
    """The headers a dead letter adds to the original message's (``routing_key``: an
    event's bucket, which a replay to a partitioned service routes it by)."""
    return {
        ERROR_TYPE_HEADER: error_type,
        ERROR_MESSAGE_HEADER: error_message[:MAX_ERROR_MESSAGE],
        TRACEBACK_HEADER: traceback_text[:MAX_TRACEBACK],
        ATTEMPTS_HEADER: attempts,
        SERVICE_HEADER: service,
        EVENT_HEADER: event or "",
        FAILED_AT_HEADER: datetime.now(UTC).isoformat(timespec="milliseconds"),
        **({ROUTING_KEY_HEADER: routing_key} if routing_key is not None else {}),
    }


def _copy(message: Message, added: Mapping[str, Any]) -> Message:
    """A copy of ``message`` with ``added`` headers, sendable whatever the original held
    (see ``_headers.sendable``)."""
    headers = sendable(
        {**message.headers, **added}, ours=tuple(added), note_header=SANITIZED_HEADER
    )
    return dataclasses.replace(message, headers=headers)


def dead_letter(message: Message, **failure: Any) -> Message:
    """The dead-letter copy of ``message``: its body and properties, with the reason added
    (keywords of :func:`failure_headers`)."""
    return _copy(message, failure_headers(**failure))


def retry_copy(message: Message, attempt: int, event: str) -> Message:
    """The copy of ``message`` parked in a retry queue: it comes back as ``attempt`` of
    ``event``."""
    return _copy(message, {ATTEMPT_HEADER: attempt, EVENT_HEADER: event})


def attempt_of(message: Message) -> int:
    """The attempt a message is on: 1, or what its retry queue copy says."""
    attempt = message.headers.get(ATTEMPT_HEADER)
    return attempt if isinstance(attempt, int) and attempt > 1 else 1


def handled_as(message: Message) -> str:
    """The event a message back from a retry queue or a replay was handled as (or ``""``)."""
    return str(message.headers.get(EVENT_HEADER, ""))


def _count(message: Message, header: str) -> int:
    count = message.headers.get(header)
    return count if isinstance(count, int) and count > 0 else 0


def crashes_of(message: Message) -> int:
    """How many times the worker died while handling ``message`` alone (0 if never)."""
    return _count(message, CRASHES_HEADER)


def handbacks_of(message: Message) -> int:
    """How many times processes with no handler for ``message`` handed it back (0 if never)."""
    return _count(message, HANDED_BACK_HEADER)


def handed_back(message: Message, exchange: str) -> Message:
    """The copy a process with no handler for ``message`` (from ``exchange``) hands back."""
    added: dict[str, Any] = {HANDED_BACK_HEADER: handbacks_of(message) + 1}
    if exchange:
        added[EXCHANGE_HEADER] = exchange
    return _copy(message, added)


def routed_through(message: Message, exchange: str) -> str:
    """The exchange ``message`` is for: its ``x-choreo-exchange`` (a handed-back copy: the
    one it first came through; a delayed message: its destination), else ``exchange``, the
    one it came through (``""``: none)."""
    named = message.headers.get(EXCHANGE_HEADER)
    return named if isinstance(named, str) and named else exchange


def with_crashes(message: Message, crashes: int) -> Message:
    """The copy of ``message`` that says its worker died ``crashes`` times."""
    return _copy(message, {CRASHES_HEADER: crashes})


def for_replay(message: Message) -> Message:
    """The dead letter without its failure headers (attempts start again at 1); it keeps
    ``x-choreo-event`` so a message that had no ``type`` is still dispatched."""
    headers = {k: v for k, v in message.headers.items() if k not in _FAILURE_HEADERS}
    return dataclasses.replace(message, headers=headers)


def causation_of(headers: Mapping[str, Any]) -> str | None:
    causation = headers.get(CAUSATION_HEADER)
    return causation if isinstance(causation, str) else None


def source_of(headers: Mapping[str, Any]) -> str | None:
    source = headers.get(SOURCE_HEADER)
    return source if isinstance(source, str) else None


PREVIEW = 120  # characters of the body a dead-letter listing shows


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """What a dead letter says about itself (``choreo dlq list`` shows it)."""

    message_id: str | None
    event: str
    error_type: str
    error_message: str
    attempts: int
    failed_at: str
    preview: str
    bucket: str | None = None  # the routing key a replay to partitions uses (None: unknown)

    @classmethod
    def read(cls, message: Message) -> DeadLetter:
        headers, body, message_id = message.headers, message.body, message.message_id
        preview = body[:PREVIEW].decode("utf-8", errors="replace")
        preview += "..." if len(body) > PREVIEW else ""
        attempts, bucket = headers.get(ATTEMPTS_HEADER, 0), routing_key_died_with(message)
        death = None if ERROR_TYPE_HEADER in headers else _broker_death(headers)
        if death is not None:
            event = str(headers.get(EVENT_HEADER) or message.type or "")
            return cls(message_id, event, death[0], death[1], 0, death[2], preview, bucket)
        return cls(
            message_id=message_id,
            event=str(headers.get(EVENT_HEADER, "")),
            error_type=str(headers.get(ERROR_TYPE_HEADER, "")),
            error_message=str(headers.get(ERROR_MESSAGE_HEADER, "")),
            attempts=attempts if isinstance(attempts, int) else 0,
            failed_at=str(headers.get(FAILED_AT_HEADER, "")),
            preview=preview,
            bucket=bucket,
        )


_BROKER_REASONS = {
    "expired": ("Expired", "its expiration passed while it waited in {queue!r}"),
    "rejected": ("Rejected", "a consumer of {queue!r} rejected it without requeue"),
    "delivery_limit": (
        "DeliveryLimit",
        "it was delivered from {queue!r} more often than the queue's delivery limit "
        "(it kept coming back unsettled: a worker that died, or undecodable input)",
    ),
    "maxlen": ("MaxLength", "{queue!r} was full"),
}


def routing_key_died_with(message: Message) -> str | None:
    """The bucket a dead letter was routed by: its ``x-choreo-routing-key`` (choreo
    dead-lettered it), else the first bucket (digits) among the routing keys of the broker's
    latest ``x-death`` entry; ``None`` when neither says (a dead letter of an older choreo)."""
    keys: Any = [message.headers.get(ROUTING_KEY_HEADER)]
    deaths = message.headers.get(DEATH_HEADER)
    if keys[0] is None and isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        keys = deaths[0].get("routing-keys")
    keys = [k.decode() if isinstance(k, bytes) else k for k in keys or ()]
    return next((k for k in keys if isinstance(k, str) and k.isascii() and k.isdigit()), None)


def _broker_death(headers: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(error type, message, time) of the broker's latest ``x-death`` entry, if any."""
    deaths = headers.get(DEATH_HEADER)
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], Mapping):
        return None
    death = deaths[0]
    reason = str(death.get("reason", ""))
    queue = str(death.get("queue", ""))
    kind, text = _BROKER_REASONS.get(reason, ("BrokerDeadLettered", "{queue!r}: " + reason))
    when = death.get("time")
    if isinstance(when, int | float):
        when = datetime.fromtimestamp(when, UTC)
    failed_at = when.isoformat(timespec="milliseconds") if isinstance(when, datetime) else ""
    return kind, "the broker dead-lettered it: " + text.format(queue=queue), failed_at
