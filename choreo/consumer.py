"""Where a message is consumed: decode it, find its handler, run it, then ack or dead-letter.

A message is dispatched by its ``type`` property; one without ``type`` (a plain JSON publish
from a service that does not use choreo) by the exchange it came through. Input that can
never succeed (unknown event, wrong content type, invalid JSON, a payload that fails
validation, a body over the size limit) is dead-lettered at once with the reason. A handler
that raises is retried following its ``Retry`` policy (short waits here, long ones through
the service's retry queues, see ``retry.py``), then dead-lettered. The message is
acknowledged only after the handler returned, or after its retry or dead-letter copy was
confirmed by the broker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from . import topology, tracing
from .context import Context
from .deadletter import EVENT_HEADER, dead_letter, format_traceback
from .errors import ChoreoError, Reject
from .events import CONTENT_TYPE, Event
from .retry import ATTEMPT_HEADER, Retry
from .service import Handler, Service
from .transports.base import Delivery

if TYPE_CHECKING:
    from .bus import Bus

__all__ = ["Poison", "QueueWorker", "ServiceConsumer"]

log = logging.getLogger("choreo.consumer")

DEAD_LETTER_BACKOFF = 1.0  # seconds before a message that could not be dead-lettered returns


class Poison(ChoreoError):
    """Input that no retry can fix; dead-lettered at once."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class QueueWorker:
    """Consumes one queue of a service: bounded concurrency, graceful drain, dead letters.

    Subclasses say what processing a delivery means (``_process``).
    """

    def __init__(self, bus: Bus, service: Service, *, queue: str, dlq: str, concurrency: int):
        self.bus = bus
        self.service = service
        self.queue = queue
        self.dlq = dlq
        self._slots = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task[object]] = set()
        self.stopping = False

    async def on_message(self, delivery: Delivery) -> None:
        """Transport callback: one call per delivery, run concurrently."""
        if self.stopping:
            await delivery.reject(requeue=True)
            return
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            async with self._slots:
                if self.stopping:
                    await delivery.reject(requeue=True)
                    return
                started = time.perf_counter()
                outcome, event_name, attempt = await self._process(delivery)
                message = delivery.message
                self.bus.observer.handled(
                    self.service.name,
                    event_name,
                    outcome,
                    time.perf_counter() - started,
                    attempt,
                    message.message_id,
                    message.correlation_id,
                )
        except asyncio.CancelledError:
            await delivery.reject(requeue=True)  # stopped past the timeout: hand it back
            raise
        finally:
            if task is not None:
                self.tasks.discard(task)

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for handlers in flight; cancel those left. True if none was."""
        self.stopping = True
        pending = set(self.tasks)
        if not pending:
            return True
        _, late = await asyncio.wait(pending, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
            log.warning(
                "%s: %d handler(s) still running after %.1fs were cancelled; "
                "their messages go back to the queue",
                self.service.name,
                len(late),
                timeout,
            )
        return not late

    async def _process(self, delivery: Delivery) -> tuple[str, str | None, int]:
        """Handle and settle ``delivery``; return (outcome, event name, last attempt)."""
        raise NotImplementedError

    @staticmethod
    def _decode(handler: Handler, delivery: Delivery) -> Event:
        content_type = delivery.message.content_type
        if content_type and content_type.split(";", 1)[0].strip().lower() != CONTENT_TYPE:
            raise Poison("UnsupportedContentType", f"content type {content_type!r} is not JSON")
        try:
            return handler.event_type.model_validate_json(delivery.message.body)
        except ValidationError as exc:
            if any(error["type"] == "json_invalid" for error in exc.errors()):
                raise Poison("InvalidJSON", f"body is not valid JSON: {exc}") from exc
            raise Poison("ValidationError", f"invalid {handler.event_name}: {exc}") from exc

    def _context(self, handler: Handler, delivery: Delivery) -> Context:
        message = delivery.message
        return Context(
            self.bus,
            service=self.service.name,
            event_name=handler.event_name,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            headers=message.headers,
            owner=self.service,
        )

    @staticmethod
    async def _call(handler: Handler, event: Event, ctx: Context) -> object:
        if handler.takes_context:
            return await handler.func(event, ctx)
        return await handler.func(event)

    async def _dead_letter(
        self,
        delivery: Delivery,
        error_type: str,
        error_message: str,
        attempts: int,
        event_name: str | None,
        traceback_text: str,
    ) -> None:
        copy = dead_letter(
            delivery.message,
            error_type=error_type,
            error_message=error_message,
            attempts=attempts,
            service=self.service.name,
            event=event_name,
            traceback_text=traceback_text,
        )
        try:  # mandatory: a DLQ that is gone must not swallow the message
            await self.bus.transport.publish(copy, "", self.dlq, mandatory=True)
        except ChoreoError as exc:
            log.error(
                "%s: could not dead-letter message %s (%s); it goes back to the queue in %g s",
                self.service.name,
                delivery.message.message_id,
                exc,
                DEAD_LETTER_BACKOFF,
            )
            await asyncio.sleep(DEAD_LETTER_BACKOFF)  # no tight redelivery loop meanwhile
            await delivery.reject(requeue=True)
            return
        await delivery.ack()
        log.error(
            "%s: message %s (%s) dead-lettered to %s after %d attempt(s): %s: %s",
            self.service.name,
            delivery.message.message_id,
            event_name,
            self.dlq,
            attempts,
            error_type,
            error_message[:300],
        )


class _RetryLater(Exception):
    """The handler failed and its next attempt waits too long to wait in the process."""


class ServiceConsumer(QueueWorker):
    """Consumes the event queue of one service: dispatch, retries, dead letters."""

    def __init__(
        self,
        bus: Bus,
        service: Service,
        *,
        queue: str,
        dlq: str,
        exchanges: dict[str, Handler],
        concurrency: int,
        retry: Retry,
        queue_type: str,
    ) -> None:
        super().__init__(bus, service, queue=queue, dlq=dlq, concurrency=concurrency)
        self._by_name = dict(service.handlers)
        self._by_exchange = exchanges
        self._retry = retry
        self._queue_type = queue_type
        self._retry_queues: set[str] = set()

    async def _process(self, delivery: Delivery) -> tuple[str, str | None, int]:
        message = delivery.message
        handler = None
        try:
            handler = self._handler_for(delivery)
            self._check_size(delivery)
            event = self._decode(handler, delivery)
        except Poison as poison:
            event_name = handler.event_name if handler else message.type
            await self._dead_letter(delivery, poison.kind, str(poison), 0, event_name, "")
            return "poison", event_name, 0
        ctx = self._context(handler, delivery)
        attempt = message.headers.get(ATTEMPT_HEADER)
        if isinstance(attempt, int) and attempt > 1:
            ctx.attempt = attempt
        retry = handler.retry or self._retry
        give_up: tuple[type[BaseException], ...] = (Reject, *retry.give_up_on)
        name = handler.event_name
        try:
            if tracing.ENABLED:
                with tracing.handling(message.headers, self.service.name, name):
                    await self._run(handler, event, ctx, retry, give_up)
            else:
                await self._run(handler, event, ctx, retry, give_up)
        except _RetryLater as later:
            await self._retry_through_broker(delivery, handler, ctx.attempt + 1, retry, later)
            return "retry", name, ctx.attempt
        except Reject as exc:
            await self._dead_letter(delivery, "Reject", exc.reason, ctx.attempt, name, "")
            return "dead-lettered", name, ctx.attempt
        except Exception as exc:
            if self.stopping and ctx.attempt < retry.attempts and not isinstance(exc, give_up):
                # shutting down with attempts left: another process, or the next start, retries
                log.info(
                    "%s: %s failed during shutdown; back to the queue for a retry",
                    self.service.name,
                    handler.event_name,
                )
                await delivery.reject(requeue=True)
                return "requeued", name, ctx.attempt
            await self._dead_letter(
                delivery,
                _qualname(type(exc)),
                str(exc),
                ctx.attempt,
                name,
                format_traceback(exc),
            )
            return "dead-lettered", name, ctx.attempt
        await delivery.ack()
        return "ok", name, ctx.attempt

    def _handler_for(self, delivery: Delivery) -> Handler:
        kind = delivery.message.type
        if kind:
            handler = self._by_name.get(kind)
        elif delivery.exchange:
            handler = self._by_exchange.get(delivery.exchange)
        else:  # back from a retry queue or a DLQ replay: the event it was handled as
            handler = self._by_name.get(str(delivery.message.headers.get(EVENT_HEADER, "")))
        if handler is None:
            what = f"event type {kind!r}" if kind else f"messages from {delivery.exchange!r}"
            raise Poison("UnknownEvent", f"service {self.service.name!r} has no handler for {what}")
        return handler

    def _check_size(self, delivery: Delivery) -> None:
        limit = self.bus.max_message_size
        size = len(delivery.message.body)
        if size > limit:
            raise Poison("MessageTooLarge", f"body of {size} bytes is over the {limit}-byte limit")

    async def _run(
        self,
        handler: Handler,
        event: Event,
        ctx: Context,
        retry: Retry,
        give_up: tuple[type[BaseException], ...],
    ) -> None:
        """Attempt ``ctx.attempt``, then the following ones whose wait is short enough to
        happen here; raise ``_RetryLater`` when the next wait belongs to the broker."""
        try:
            await self._call(handler, event, ctx)
            return
        except give_up:
            raise
        except Exception as exc:
            if ctx.attempt >= retry.attempts or self.stopping:
                raise
            if not retry.in_process(ctx.attempt + 1):
                raise _RetryLater() from exc
            log.warning(
                "%s: %s failed on attempt %d/%d, retrying: %s",
                self.service.name,
                handler.event_name,
                ctx.attempt,
                retry.attempts,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
        first = ctx.attempt + 1
        last = first
        while last < retry.attempts and retry.in_process(last + 1):
            last += 1
        retrying = AsyncRetrying(
            stop=stop_after_attempt(last - first + 1),
            wait=lambda state: retry.wait_before(first + state.attempt_number),
            retry=retry_if_exception(
                lambda exc: not isinstance(exc, give_up) and not self.stopping
            ),
            reraise=True,
        )
        await asyncio.sleep(retry.wait_before(first))
        try:
            async for try_ in retrying:
                with try_:
                    ctx.attempt = first + try_.retry_state.attempt_number - 1
                    await self._call(handler, event, ctx)
        except give_up:
            raise
        except Exception as exc:
            if ctx.attempt < retry.attempts and not self.stopping:
                raise _RetryLater() from exc
            raise

    async def _retry_through_broker(
        self, delivery: Delivery, handler: Handler, attempt: int, retry: Retry, later: _RetryLater
    ) -> None:
        """Park a copy in this service's retry queue for the wait; ack once it is stored."""
        spec = topology.retry_queue(
            self.queue, round(retry.wait_before(attempt) * 1000), self._queue_type
        )
        headers = dict(delivery.message.headers)
        headers[ATTEMPT_HEADER] = attempt
        headers[EVENT_HEADER] = handler.event_name
        copy = dataclasses.replace(delivery.message, headers=headers)
        try:
            if spec.name not in self._retry_queues:
                await self.bus.transport.declare_queue(spec)
                self.bus.declared_queues.add(spec.name)
                self._retry_queues.add(spec.name)
            await self.bus.transport.publish(copy, "", spec.name, mandatory=True)
        except ChoreoError as exc:
            log.error("%s: could not schedule a retry (%s); requeued", self.service.name, exc)
            await delivery.reject(requeue=True)
            return
        await delivery.ack()
        cause = later.__cause__
        log.warning(
            "%s: %s failed (%s: %s); attempt %d/%d in %.1fs, through %s",
            self.service.name,
            handler.event_name,
            type(cause).__name__,
            cause,
            attempt,
            retry.attempts,
            retry.wait_before(attempt),
            spec.name,
        )


def _qualname(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"
