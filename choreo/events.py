"""The ``Event`` base class, event names, and the envelope that carries an event on the wire.

An event is a pydantic model. Its name is the snake_case of the class name, or the
``name=`` class keyword::

    class SkuProcessed(Event):                                  # "sku_processed"
        sku: str

    class PriceChanged(Event, name="pricing.price_changed"):    # explicit
        sku: str
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel

from .errors import ConfigurationError
from .transports.base import Message

__all__ = ["CAUSATION_HEADER", "CONTENT_TYPE", "Event", "encode", "event_name_of"]

CONTENT_TYPE = "application/json"
CAUSATION_HEADER = "x-causation-id"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """``SkuProcessed`` -> ``sku_processed``; ``HTTPRequestSent`` -> ``http_request_sent``."""
    return _CAMEL_BOUNDARY.sub("_", name).lower()


class Event(BaseModel):
    """Base class of every event; subclass it and declare fields as with any pydantic model."""

    __event_name__: ClassVar[str]

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        event_name = snake_case(cls.__name__) if name is None else name
        if not isinstance(event_name, str) or not _NAME_RE.match(event_name):
            raise ConfigurationError(
                f"invalid event name {event_name!r} for {cls.__qualname__}: use letters, digits, "
                "'_', '.' and '-', starting with a letter or digit"
            )
        cls.__event_name__ = event_name


def event_name_of(event_type: object) -> str:
    """The event name of an ``Event`` subclass, or a ``ConfigurationError`` for anything else."""
    if (
        isinstance(event_type, type)
        and issubclass(event_type, Event)
        and event_type is not Event
        and "__event_name__" in vars(event_type)
    ):
        return event_type.__event_name__
    raise ConfigurationError(f"expected a subclass of choreo.Event, got {event_type!r}")


def encode(
    event: Event,
    *,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
) -> Message:
    """Build the wire message for ``event``: JSON body, persistent, with ids and type."""
    if not isinstance(event, Event) or type(event) is Event:
        raise ConfigurationError(f"expected an instance of a choreo.Event subclass, got {event!r}")
    message_id = uuid.uuid4().hex
    all_headers: dict[str, Any] = dict(headers) if headers else {}
    if causation_id is not None:
        all_headers[CAUSATION_HEADER] = causation_id
    return Message(
        body=event.__pydantic_serializer__.to_json(event),
        message_id=message_id,
        type=type(event).__event_name__,
        correlation_id=correlation_id,
        content_type=CONTENT_TYPE,
        timestamp=int(time.time()),
        headers=all_headers,
    )
