"""``Context``: what a handler knows about the message it handles, and how it publishes.

What a handler publishes or asks through its context carries the ``x-choreo-source``
header (the name of the service). An event or request the running service did not declare
(``Service(emits=..., requests=...)`` or the same on its handler) is published all the
same, with one warning per running service and name: declarations are what
``choreo graph``, ``choreo check`` and ``choreo asyncapi`` see.

A context publishes through a :class:`Publisher` (the bus is one); it never holds the bus.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from . import wire
from .delay import Delay, seconds_of
from .errors import ConfigurationError
from .events import Event, ordering_key_of
from .observability import tracing
from .storage import Staging

__all__ = ["Context", "Declares", "Publisher", "UndeclaredCheck"]

log = logging.getLogger("choreo.context")

R = TypeVar("R", bound=Event)


class Publisher(Protocol):
    """What a context needs to publish and ask: ``choreo.Bus`` is one."""

    async def publish(
        self,
        event: Event,
        *,
        correlation_id: str | None = ...,
        causation_id: str | None = ...,
        headers: Mapping[str, Any] | None = ...,
        delay: Delay = ...,
    ) -> str: ...

    async def request(
        self,
        request: Event,
        reply_type: type[R],
        *,
        timeout: float = ...,
        correlation_id: str | None = ...,
        causation_id: str | None = ...,
        headers: Mapping[str, Any] | None = ...,
    ) -> R: ...


class Declares(Protocol):
    """What a service declares it sends (``choreo.Service`` is one)."""

    name: str

    def may_emit(self, event_name: str, handled: str | None = None) -> bool: ...

    def may_request(self, request_name: str, handled: str | None = None) -> bool: ...


class UndeclaredCheck:
    """Warns once per name when a running service sends what it did not declare."""

    def __init__(self, service: Declares) -> None:
        self.service = service
        self._seen: set[tuple[str, str, str]] = set()  # (what, handled event, name): checked
        self._warned: set[tuple[str, str]] = set()  # (what, name): warned

    def check(self, what: str, handled: str, event: Event) -> None:
        name = type(event).__event_name__
        key = (what, handled, name)
        if key in self._seen:
            return
        self._seen.add(key)
        if what == "emits":
            declared = self.service.may_emit(name, handled)
        else:
            declared = self.service.may_request(name, handled)
        if declared or (what, name) in self._warned:
            return
        self._warned.add((what, name))
        log.warning(
            "service %r %s %r without declaring it: add %s=[%s] to Service(%r) or to its "
            "handler of %r (choreo graph, check and asyncapi only see declarations)",
            self.service.name,
            "published" if what == "emits" else "sent the request",
            name,
            what,
            type(event).__name__,
            self.service.name,
            handled,
        )


class Context:
    """Passed to handlers that take a second parameter.

    Events published with :meth:`publish`, and requests sent with :meth:`request`, continue
    the conversation: they carry the incoming ``correlation_id`` (or, for the first hop, the
    incoming ``message_id``) and have the incoming ``message_id`` as their causation id.
    """

    __slots__ = (
        "_check",
        "_publisher",
        "_staging",
        "attempt",
        "causation_id",
        "correlation_id",
        "event_name",
        "headers",
        "message_id",
        "service",
    )

    def __init__(
        self,
        publisher: Publisher,
        *,
        service: str,
        event_name: str,
        message_id: str | None,
        correlation_id: str | None,
        headers: Mapping[str, Any],
        attempt: int = 1,
        check: UndeclaredCheck | None = None,
    ) -> None:
        self._publisher = publisher
        self._check = check
        self.service = service
        self.event_name = event_name
        self.message_id = message_id
        # a foreign message with neither id still starts a chain its follow-ups share
        self.correlation_id = correlation_id or message_id or uuid.uuid4().hex
        causation = headers.get(wire.CAUSATION_HEADER)
        self.causation_id = causation if isinstance(causation, str) else None
        self.headers = headers
        self.attempt = attempt
        self._staging: Staging | None = None  # set while a stored service's handler runs

    def __repr__(self) -> str:
        return (
            f"Context(service={self.service!r}, event_name={self.event_name!r}, "
            f"message_id={self.message_id!r}, attempt={self.attempt})"
        )

    async def publish(
        self,
        event: Event,
        *,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: Delay = None,
    ) -> str:
        """Publish ``event`` as a consequence of the message being handled. In a service
        with a store it is staged in the outbox, in the handler's transaction, and sent by
        the relay once that commits (nothing is sent if the handler fails).

        ``delay`` (seconds or a ``timedelta``): delivered no earlier than that; with a
        store the outbox row is due then, else it waits in the broker's delay levels
        (whole seconds, at most about 24 days; see ``choreo/delay.py``)."""
        self._check_declared("emits", event)
        correlation = correlation_id or self.correlation_id or self.message_id
        if self._staging is None:
            return await self._publisher.publish(
                event,
                correlation_id=correlation,
                causation_id=self.message_id,
                headers=self._headers(headers),
                delay=delay,
            )
        message = wire.encode(
            event,
            correlation_id=correlation,
            causation_id=self.message_id,
            headers=self._headers(headers),
        )
        if tracing.ENABLED:
            tracing.inject(message.headers)
        due = time.time() + seconds_of(delay) if delay else None
        await self._staging.stage(message, due, ordering_key_of(event))
        return message.message_id  # type: ignore[return-value]  # wire always sets it

    @property
    def session(self) -> Any:
        """The database session (SQLAlchemy ``AsyncSession``) of the handler's transaction:
        the inbox row of this message, the handler's writes and what it publishes commit
        together. Only in a service with a store."""
        if self._staging is None:
            raise ConfigurationError(
                f"ctx.session: this handler of {self.service!r} runs outside a store "
                "transaction; only event handlers of a service with a store have one: "
                "Service(..., store=choreo.sql.Store(engine))"
            )
        return self._staging.session

    async def request(
        self,
        request: Event,
        reply_type: type[R],
        *,
        timeout: float = 5.0,
        headers: Mapping[str, Any] | None = None,
    ) -> R:
        """Ask the service that responds to ``request``; see :meth:`choreo.Bus.request`."""
        self._check_declared("requests", request)
        return await self._publisher.request(
            request,
            reply_type,
            timeout=timeout,
            correlation_id=self.correlation_id or self.message_id,
            causation_id=self.message_id,
            headers=self._headers(headers),
        )

    def _headers(self, headers: Mapping[str, Any] | None) -> dict[str, Any]:
        """``headers`` with ``x-choreo-source`` (unless the caller set it)."""
        return {wire.SOURCE_HEADER: self.service, **(headers or {})}

    def _check_declared(self, what: str, event: Event) -> None:
        if self._check is not None and isinstance(event, Event):
            self._check.check(what, self.event_name, event)
