"""Where an event is dispatched: find its handler, decode it, run the handler with its
in-process retries, and decide what becomes of the delivery.

A message is dispatched by its ``type`` property; one without ``type`` (a plain JSON
publish from a service that does not use choreo) by the exchange it came through; one
back from a retry queue or a DLQ replay by the event it was handled as. Input that can
never succeed (unknown event, wrong content type, invalid JSON, a payload that fails
validation, a body over the size limit) is dead-lettered at once with the reason. A
handler that raises is retried following its ``Retry`` policy (short waits here, long ones
through the broker), then dead-lettered. The verdict is carried out by ``settle.py``.
"""

from __future__ import annotations

import logging

from .. import wire
from ..context import Context
from ..errors import Reject
from ..events import Event
from ..observability import tracing
from ..observability.logs import HANDLING
from ..observability.observer import Outcome
from ..retry import Retry
from ..service import Handler, Service
from ..storage import Duplicate, Skipped
from ..topology import DEFAULT_DELIVERY_LIMIT
from ..transports.base import Delivery
from .settle import ACK, DUPLICATE, Ack, GiveUp, HandBack, RetryLater, Settler, Verdict
from .suspects import Suspects
from .worker import HandlerExit, QueueWorker, Setup, call

__all__ = ["EventWorker"]

log = logging.getLogger("choreo.dispatch")


class EventWorker(QueueWorker):
    """Consumes the event queue of one service."""

    def __init__(
        self,
        setup: Setup,
        service: Service,
        *,
        queue: str,
        settler: Settler,
        exchanges: dict[str, Handler],
        concurrency: int,
        retry: Retry,
        suspects: Suspects | None = None,
        handback_limit: int = DEFAULT_DELIVERY_LIMIT,
    ) -> None:
        super().__init__(
            setup,
            service,
            queue=queue,
            settler=settler,
            concurrency=concurrency,
            suspects=suspects,
        )
        self._by_name = dict(service.handlers)
        self._by_exchange = exchanges
        self._retry = retry
        self._handback_limit = handback_limit
        self._store = service.store
        self._call = call if self._store is None else self._stored_call
        self._unhandled_seen: set[str] = set()

    async def _process(self, delivery: Delivery) -> tuple[Verdict, str | None, int]:
        message = delivery.message
        handler = None
        try:
            if message.undecodable:
                raise wire.Undecodable("UndecodableProperties", message.undecodable)
            handler = self._handler_for(delivery)
            if handler is None:
                return self._unhandled(delivery), message.type, 0
            self._check_size(delivery)
            event = wire.decode(handler.event_type, message, handler.event_name)
        except wire.Undecodable as poison:
            name = handler.event_name if handler else message.type
            return GiveUp(poison.kind, str(poison), 0, name, poison=True), name, 0
        ctx = self._context(handler, delivery, wire.attempt_of(message))
        retry = handler.retry or self._retry
        give_up: tuple[type[BaseException], ...] = (Reject, Duplicate, Skipped, *retry.give_up_on)
        name = handler.event_name
        handling = HANDLING.set(ctx)  # the ids of this message on every log line
        try:
            if tracing.ENABLED:
                with tracing.handling(message.headers, self.service.name, name):
                    await self._attempts(handler, event, ctx, retry, give_up)
            else:
                await self._attempts(handler, event, ctx, retry, give_up)
        except Reject as exc:
            return GiveUp("Reject", exc.reason, ctx.attempt, name), name, ctx.attempt
        except Duplicate:
            return DUPLICATE, name, ctx.attempt
        except Skipped as skipped:
            return Ack(Outcome(skipped.outcome)), name, ctx.attempt
        except Exception as exc:
            if ctx.attempt < retry.attempts and not isinstance(exc, give_up):
                next_attempt = ctx.attempt + 1
                # shutting down: another process, or the next start, makes the next attempt
                wait = 0.0 if self.stopping else retry.wait_before(next_attempt)
                return RetryLater(next_attempt, retry.attempts, wait, name, exc), name, ctx.attempt
            what = exc.original if isinstance(exc, HandlerExit) else exc
            failed = GiveUp(
                _qualname(type(what)), str(exc), ctx.attempt, name, wire.format_traceback(exc)
            )
            return failed, name, ctx.attempt
        finally:
            HANDLING.reset(handling)
        return ACK, name, ctx.attempt

    def _handler_for(self, delivery: Delivery) -> Handler | None:
        message = delivery.message
        if message.type:
            return self._by_name.get(message.type)
        exchange = wire.routed_through(message, delivery.exchange)
        if exchange:
            return self._by_exchange.get(exchange)
        # back from a retry queue or a DLQ replay: the event it was handled as
        return self._by_name.get(wire.handled_as(message))

    def _unhandled(self, delivery: Delivery) -> Verdict:
        """No handler here. An event this service does not know, or a message from an
        exchange it has no handler for, is handed back for another process of the service
        that may have one (a rolling upgrade that adds a handler; another service under
        the same name), a few times, later each time; then it is dead-lettered as
        ``UnknownEvent``. So is, at once, an unknown type through an exchange this service
        handles (mislabelled) or a message that nothing routed and that has no type."""
        message, name = delivery.message, self.service.name
        exchange = wire.routed_through(message, delivery.exchange)
        what = f"event type {message.type!r}" if message.type else f"messages from {exchange!r}"
        deliveries = wire.handbacks_of(message) + 1
        foreign = (message.type or exchange) and exchange not in self._by_exchange
        if foreign and deliveries < self._handback_limit:
            if what not in self._unhandled_seen:
                self._unhandled_seen.add(what)
                log.warning(
                    "%s: no handler for %s, which its queue is bound for: handed back for "
                    "another process of %s (a rolling upgrade, or another service under the "
                    "same name?); `choreo topology --prune` drops bindings no handler wants",
                    name, what, name,
                )  # fmt: skip
            return HandBack(exchange, 0.0 if deliveries == 1 else float(2 ** (deliveries - 2)))
        reason = f"service {name!r} has no handler for {what}"
        if deliveries > 1:
            reason += f" (delivered {deliveries} times: no process of {name!r} had one)"
        return GiveUp("UnknownEvent", reason, 0, message.type, poison=True)

    def _check_size(self, delivery: Delivery) -> None:
        limit = self.setup.max_message_size
        size = len(delivery.message.body)
        if size > limit:
            raise wire.Undecodable(
                "MessageTooLarge", f"body of {size} bytes is over the {limit}-byte limit"
            )

    async def _attempts(
        self,
        handler: Handler,
        event: Event,
        ctx: Context,
        retry: Retry,
        give_up: tuple[type[BaseException], ...],
    ) -> None:
        """Attempt ``ctx.attempt``, then the following ones whose wait is short enough to
        happen here; the exception of the last one is raised (``ctx.attempt`` says which)."""
        try:
            await self._call(handler, event, ctx)
            return
        except give_up:
            raise
        except Exception as exc:
            following = ctx.attempt + 1
            if following > retry.attempts or self.stopping or not retry.in_process(following):
                raise
            self._log_retry(handler, ctx.attempt, retry, exc)
            last: Exception = exc
        first = ctx.attempt + 1
        await self.pause(retry.wait_before(first))
        attempts = retry.in_process_attempts(
            first, give_up=give_up, stopping=lambda: self.stopping, sleep=self.pause
        )
        async for attempt in attempts:
            with attempt:
                if self.stopping:  # a wait cut short by a stop: the next worker attempts
                    raise last
                ctx.attempt = first - 1 + attempt.retry_state.attempt_number
                try:
                    await self._call(handler, event, ctx)
                except Exception as exc:
                    last = exc
                    raise

    async def _stored_call(self, handler: Handler, event: Event, ctx: Context) -> object:
        """One attempt in one transaction of the service's store: the inbox row, the
        handler's writes and what it publishes (staged) commit together; ``Duplicate`` if
        the inbox holds the message already. A failure rolls it all back."""
        assert self._store is not None
        async with self._store.handling(self.service.name, ctx.message_id) as staging:
            ctx._staging = staging
            try:
                return await call(handler, event, ctx)
            finally:
                ctx._staging = None

    def _log_retry(self, handler: Handler, attempt: int, retry: Retry, exc: Exception) -> None:
        log.warning(
            "%s: %s failed on attempt %d/%d, retrying: %s",
            self.service.name,
            handler.event_name,
            attempt,
            retry.attempts,
            exc,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )


def _qualname(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"
