"""Where requests are answered: run the responder, send its reply to the requester.

A request is dispatched by its ``type`` (or, without one, by its routing key, which is the
request name). The reply goes through the default exchange to the request's ``reply_to``
address with ``correlation_id`` = the request's ``message_id``. When the responder raises,
or the request cannot be decoded, the reply is an error (``type=choreo.error``, the error
in the ``x-choreo-error-type`` and ``x-choreo-error-message`` headers and in the body), so
the requester gets ``RemoteError`` at once instead of waiting for its timeout; the
responder goes on serving. A request without ``reply_to`` cannot be answered and is
dead-lettered. The request is acknowledged once the reply was handed to the broker.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from . import tracing
from .consumer import Poison, QueueWorker
from .errors import ChoreoError
from .events import CAUSATION_HEADER, CONTENT_TYPE, Event, encode
from .service import Handler, Service
from .transports.base import Delivery, Message

if TYPE_CHECKING:
    from .bus import Bus

__all__ = ["ERROR_TYPE", "Responder", "error_reply"]

log = logging.getLogger("choreo.responder")

ERROR_TYPE = "choreo.error"


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
            "x-choreo-error-type": error_type,
            "x-choreo-error-message": error_message[:1024],
            "x-choreo-service": service,
            CAUSATION_HEADER: request.message_id,
        },
        persistent=False,
    )


class Responder(QueueWorker):
    """Consumes the request queue of one service and replies."""

    def __init__(self, bus: Bus, service: Service, *, queue: str, dlq: str, concurrency: int):
        super().__init__(bus, service, queue=queue, dlq=dlq, concurrency=concurrency)
        self._by_name = dict(service.responders)

    async def _process(self, delivery: Delivery) -> tuple[str, str | None, int]:
        request = delivery.message
        name = request.type or delivery.routing_key
        if not request.reply_to:
            await self._dead_letter(
                delivery, "NoReplyTo", "a request without reply_to cannot be answered", 0, name, ""
            )
            return "poison", name, 0
        handler = self._by_name.get(name)
        if handler is None:
            reply = error_reply(
                request,
                self.service.name,
                "UnknownRequest",
                f"service {self.service.name!r} does not respond to {name!r}",
            )
        else:
            reply = await self._answer(handler, delivery)
        try:
            await self.bus.transport.publish(reply, "", request.reply_to)
        except ChoreoError as exc:  # the requester will time out; the request is answered
            log.warning("%s: reply to %s not sent: %s", self.service.name, name, exc)
        await delivery.ack()
        return ("error" if reply.type == ERROR_TYPE else "ok"), name, 1

    async def _answer(self, handler: Handler, delivery: Delivery) -> Message:
        request = delivery.message
        try:
            query = self._decode(handler, delivery)
        except Poison as poison:
            return error_reply(request, self.service.name, poison.kind, str(poison))
        try:
            with tracing.handling(request.headers, self.service.name, handler.event_name):
                result = await self._call(handler, query, self._context(handler, delivery))
            if not isinstance(result, Event):
                raise TypeError(
                    f"responder {handler.qualname} returned {type(result).__name__}, not an Event"
                )
        except Exception as exc:
            log.warning(
                "%s: responder for %s raised %s: %s",
                self.service.name,
                handler.event_name,
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return error_reply(request, self.service.name, type(exc).__name__, str(exc))
        reply = encode(result, correlation_id=request.message_id, causation_id=request.message_id)
        reply.persistent = False
        return reply
