"""Where requests are answered: run the responder, send its reply to the requester.

A request is dispatched by its ``type`` (or, without one, by its routing key, which is the
request name). The reply goes through the default exchange to the request's ``reply_to``
address with ``correlation_id`` = the request's ``message_id``. When the responder raises,
or the request cannot be decoded, the reply is an error reply (``wire.error_reply``), so
the requester gets ``RemoteError`` at once instead of waiting for its timeout; the
responder goes on serving. A request without ``reply_to`` cannot be answered and is
dead-lettered. The request is acknowledged once the reply was handed to the broker.
"""

from __future__ import annotations

import logging

from .. import wire
from ..errors import ChoreoError
from ..events import Event
from ..observability import tracing
from ..observability.observer import Outcome
from ..service import Handler, Service
from ..transports.base import Delivery, Message
from .settle import ACK, Ack, GiveUp, Settler, Verdict
from .worker import QueueWorker, Setup, call

__all__ = ["RequestWorker"]

log = logging.getLogger("choreo.responder")

_ANSWERED_WITH_ERROR = Ack(Outcome.ERROR)


class RequestWorker(QueueWorker):
    """Consumes the request queue of one service and replies."""

    def __init__(
        self, setup: Setup, service: Service, *, queue: str, settler: Settler, concurrency: int
    ) -> None:
        super().__init__(setup, service, queue=queue, settler=settler, concurrency=concurrency)
        self._by_name = dict(service.responders)

    async def _process(self, delivery: Delivery) -> tuple[Verdict, str | None, int]:
        request = delivery.message
        name = request.type or delivery.routing_key
        if not request.reply_to:
            reason = "a request without reply_to cannot be answered"
            return GiveUp("NoReplyTo", reason, 0, name, poison=True), name, 0
        handler = self._by_name.get(name)
        if handler is None:
            reply = wire.error_reply(
                request,
                self.service.name,
                "UnknownRequest",
                f"service {self.service.name!r} does not respond to {name!r}",
            )
        else:
            reply = await self._answer(handler, delivery)
        try:
            await self.setup.transport.publish(reply, "", request.reply_to)
        except ChoreoError as exc:  # the requester will time out; the request is answered
            log.warning("%s: reply to %s not sent: %s", self.service.name, name, exc)
        return (_ANSWERED_WITH_ERROR if reply.type == wire.ERROR_TYPE else ACK), name, 1

    async def _answer(self, handler: Handler, delivery: Delivery) -> Message:
        request = delivery.message
        try:
            query = wire.decode(handler.event_type, request, handler.event_name)
        except wire.Undecodable as poison:
            return wire.error_reply(request, self.service.name, poison.kind, str(poison))
        try:
            with tracing.handling(request.headers, self.service.name, handler.event_name):
                result = await call(handler, query, self._context(handler, delivery))
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
            return wire.error_reply(request, self.service.name, type(exc).__name__, str(exc))
        reply = wire.encode(
            result, correlation_id=request.message_id, causation_id=request.message_id
        )
        reply.persistent = False
        return reply
