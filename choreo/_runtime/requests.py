"""Request-response, the asking side: a request goes to the requests exchange with the
request's name as routing key; its reply (or its absence) becomes the typed reply or one
of choreo's errors. The answering side is ``responder.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from .. import topology, wire
from ..errors import ConfigurationError, InvalidReply, NoResponder, RemoteError, RequestTimeout
from ..events import Event, event_name_of
from ..observability import tracing
from ..transports.base import DIRECT
from .declare import Declarer

__all__ = ["send_request"]

R = TypeVar("R", bound=Event)


async def send_request(
    declarer: Declarer,
    namespace: str,
    request: Event,
    reply_type: type[R],
    *,
    timeout: float,
    correlation_id: str | None,
    causation_id: str | None,
    headers: Mapping[str, Any] | None,
) -> R:
    """Send ``request`` through ``declarer``'s transport and return its reply; see
    ``choreo.Bus.request``."""
    reply_name = event_name_of(reply_type)
    if timeout <= 0:
        raise ConfigurationError(f"request timeout must be positive, got {timeout}")
    message = wire.encode(
        request, correlation_id=correlation_id, causation_id=causation_id, headers=headers
    )
    name = message.type or ""
    if tracing.ENABLED:
        tracing.inject(message.headers)
    exchange = topology.requests_exchange_name(namespace)
    if exchange not in declarer.exchanges:
        await declarer.exchange(exchange, DIRECT)
    try:
        reply = await declarer.transport.request(message, exchange, name, timeout)
    except NoResponder:
        where = f" in namespace {namespace!r}" if namespace else ""
        raise NoResponder(f"no service responds to {name!r}{where}") from None
    except RequestTimeout:
        raise RequestTimeout(f"request {name!r} got no reply within {timeout}s") from None
    failure = wire.read_error_reply(reply)
    if failure is not None:
        raise RemoteError(*failure)
    if reply.type is not None and reply.type != reply_name:
        raise InvalidReply(f"request {name!r} expected a {reply_name!r} reply, got {reply.type!r}")
    try:
        return reply_type.model_validate_json(reply.body)
    except ValidationError as exc:
        raise InvalidReply(
            f"reply to {name!r} is not a valid {reply_type.__name__}: {exc}"
        ) from None
