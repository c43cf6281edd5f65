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

__all__ = ["Event", "event_name_of", "ordering_key_in", "ordering_key_of", "snake_case"]

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


_KEYED: dict[str, list[type[Event]]] = {}  # event name -> its classes that have a key=
_INDEXED = [-1]  # how many direct subclasses Event had when _KEYED was built


def ordering_key_in(name: str, body: bytes) -> str | None:
    """The ordering key of an event already encoded (``name``, its JSON ``body``), as
    ``ordering_key_of`` gives it: the body validated as the class of that name that has
    ``key=``, among the classes this process defined. None when there is none (an event
    without a key, a foreign one) or the body is not one. For what routes a message
    without its event at hand: ``publish_json``, a replayed dead letter, a quarantine copy."""
    if name not in _KEYED or len(Event.__subclasses__()) != _INDEXED[0]:  # new classes?
        _KEYED.clear()
        _INDEXED[0] = len(Event.__subclasses__())
        pending: list[type[Event]] = [Event]
        while pending:
            for cls in pending.pop().__subclasses__():
                pending.append(cls)
                if "__event_name__" in vars(cls):  # every name, with its keyed classes
                    keyed = _KEYED.setdefault(cls.__event_name__, [])
                    keyed += [cls] if cls.__event_key__ is not None else []
    for cls in _KEYED.get(name, ()):
        try:
            return ordering_key_of(cls.model_validate_json(body))
        except ValueError:  # pydantic's ValidationError: not this class
            continue
    return None
