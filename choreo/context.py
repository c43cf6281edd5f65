"""``Context``: what a handler knows about the message it handles, and how it publishes.

What a handler publishes or asks through its context carries the ``x-choreo-source``
header (the name of the service). An event or request the running service did not declare
(``Service(emits=..., requests=...)`` or the same on its handler) is published all the
same, with one warning per service and name in the process: declarations are what
``choreo graph``, ``choreo check`` and ``choreo asyncapi`` see.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .events import CAUSATION_HEADER, Event

if TYPE_CHECKING:
    from .bus import Bus
    from .service import Service

__all__ = ["SOURCE_HEADER", "Context"]

log = logging.getLogger("choreo.context")

R = TypeVar("R", bound=Event)

SOURCE_HEADER = "x-choreo-source"

_warned: set[tuple[str, str, str]] = set()  # (what, service, name): warn once per process
# per service, (what, handler's event, name) already found declared: no check next time
_checked: weakref.WeakKeyDictionary[Service, set[tuple[str, str, str]]] = (
    weakref.WeakKeyDictionary()
)


class Context:
    """Passed to handlers that take a second parameter.

    Events published with :meth:`publish`, and requests sent with :meth:`request`, continue
    the conversation: they carry the incoming ``correlation_id`` (or, for the first hop, the
    incoming ``message_id``) and have the incoming ``message_id`` as their causation id.
    """

    __slots__ = (
        "_bus",
        "_owner",
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
        bus: Bus,
        *,
        service: str,
        event_name: str,
        message_id: str | None,
        correlation_id: str | None,
        headers: Mapping[str, Any],
        attempt: int = 1,
        owner: Service | None = None,
    ) -> None:
        self._bus = bus
        self._owner = owner  # the Service whose declarations ctx.publish checks
        self.service = service
        self.event_name = event_name
        self.message_id = message_id
        self.correlation_id = correlation_id
        causation = headers.get(CAUSATION_HEADER)
        self.causation_id = causation if isinstance(causation, str) else None
        self.headers = headers
        self.attempt = attempt

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
    ) -> str:
        """Publish ``event`` as a consequence of the message being handled."""
        self._check_declared("emits", event)
        return await self._bus.publish(
            event,
            correlation_id=correlation_id or self.correlation_id or self.message_id,
            causation_id=self.message_id,
            headers=self._headers(headers),
        )

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
        return await self._bus.request(
            request,
            reply_type,
            timeout=timeout,
            correlation_id=self.correlation_id or self.message_id,
            causation_id=self.message_id,
            headers=self._headers(headers),
        )

    def _headers(self, headers: Mapping[str, Any] | None) -> dict[str, Any]:
        """``headers`` with ``x-choreo-source`` (unless the caller set it)."""
        return {SOURCE_HEADER: self.service, **(headers or {})}

    def _check_declared(self, what: str, event: Event) -> None:
        """Warn, once per service and name, about an event or request not declared."""
        if not isinstance(event, Event):
            return  # the bus says what is wrong with it
        name = type(event).__event_name__
        service = self._owner
        if service is None:
            return
        checked = (what, self.event_name, name)
        done = _checked.setdefault(service, set())
        key = (what, self.service, name)
        if checked in done or key in _warned:
            return
        if what == "emits":
            declared = service.may_emit(name, self.event_name)
        else:
            declared = service.may_request(name, self.event_name)
        if declared:
            done.add(checked)
            return
        _warned.add(key)
        log.warning(
            "service %r %s %r without declaring it: add %s=[%s] to Service(%r) or to its "
            "handler of %r (choreo graph, check and asyncapi only see declarations)",
            self.service,
            "published" if what == "emits" else "sent the request",
            name,
            what,
            type(event).__name__,
            self.service,
            self.event_name,
        )
