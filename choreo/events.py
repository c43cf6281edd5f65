"""The ``Event`` base class and event names.

An event is a pydantic model. Its name is the snake_case of the class name, or the
``name=`` class keyword::

    class SkuProcessed(Event):                                  # "sku_processed"
        sku: str

    class PriceChanged(Event, name="pricing.price_changed"):    # explicit
        sku: str

``key=`` names the field whose value is the event's ordering key (its ``str()``): a
partitioned service (``Service(..., partitions=N)``) handles the events of one key in
publish order. Publishers route an event by the bucket of its key (``wire.bucket_of``).

How an event travels (its message, headers, ids) is the wire contract, in ``wire.py``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel

from .errors import ConfigurationError
from .wire import check_name

__all__ = ["Event", "event_name_of", "ordering_key_of", "snake_case"]

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """``SkuProcessed`` -> ``sku_processed``; ``HTTPRequestSent`` -> ``http_request_sent``."""
    return _CAMEL_BOUNDARY.sub("_", name).lower()


class Event(BaseModel):
    """Base class of every event; subclass it and declare fields as with any pydantic model."""

    __event_name__: ClassVar[str]
    __event_key__: ClassVar[str | None] = None  # the field holding the ordering key

    def __init_subclass__(
        cls, name: str | None = None, key: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        event_name = snake_case(cls.__name__) if name is None else name
        cls.__event_name__ = check_name("event name", event_name, where=cls.__qualname__)
        if key is not None:
            if not isinstance(key, str):
                raise ConfigurationError(f"{cls.__qualname__}: key must name a field, got {key!r}")
            cls.__event_key__ = key

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        key = cls.__event_key__
        if key is not None and key not in cls.model_fields:
            raise ConfigurationError(
                f"{cls.__qualname__}: key={key!r} is not a field of the event "
                f"(its fields: {', '.join(cls.model_fields) or 'none'})"
            )


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


def ordering_key_of(event: Event) -> str | None:
    """The ordering key of ``event`` (``str()`` of its ``key=`` field), or ``None``."""
    key = type(event).__event_key__
    return None if key is None else str(getattr(event, key))
