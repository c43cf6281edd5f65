"""``Context``: what a handler knows about the message it handles, and how it publishes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .events import CAUSATION_HEADER, Event

if TYPE_CHECKING:
    from .bus import Bus

__all__ = ["Context"]

R = TypeVar("R", bound=Event)


class Context:
    """Passed to handlers that take a second parameter.

    Events published with :meth:`publish`, and requests sent with :meth:`request`, continue
    the conversation: they carry the incoming ``correlation_id`` (or, for the first hop, the
    incoming ``message_id``) and have the incoming ``message_id`` as their causation id.
    """

    __slots__ = (
        "_bus",
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
    ) -> None:
        self._bus = bus
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
        return await self._bus.publish(
            event,
            correlation_id=correlation_id or self.correlation_id or self.message_id,
            causation_id=self.message_id,
            headers=headers,
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
        return await self._bus.request(
            request,
            reply_type,
            timeout=timeout,
            correlation_id=self.correlation_id or self.message_id,
            causation_id=self.message_id,
            headers=headers,
        )
