"""Settling a delivery: the one place where a delivery is acknowledged, handed back,
parked for a retry through the broker, or dead-lettered.

Dispatch decides a ``Verdict``; :meth:`Settler.settle` carries it out and returns the
``Outcome`` the observer (and metrics) report. A message leaves its queue only once what
replaces it (a retry copy, a dead letter) was confirmed by the broker; when that fails,
the message goes back to its queue, after a pause so it does not loop tightly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass

from ..errors import ChoreoError
from ..observability.observer import Outcome
from ..transports.base import Delivery, Transport
from ..wire import ROUTING_KEY_HEADER, handed_back, with_crashes
from .broker_retry import BrokerRetry
from .deadletter import routing_bucket, send_to_dlq

__all__ = [
    "ACK",
    "DUPLICATE",
    "REQUEUE",
    "Ack",
    "GiveUp",
    "HandBack",
    "Quarantine",
    "Requeue",
    "RetryLater",
    "Settler",
    "Verdict",
]

log = logging.getLogger("choreo.settle")

DEAD_LETTER_BACKOFF = 1.0  # seconds before a message that could not be dead-lettered returns


@dataclass(frozen=True, slots=True)
class Ack:
    """Handled: the broker may forget the message."""

    outcome: Outcome = Outcome.OK


@dataclass(frozen=True, slots=True)
class Requeue:
    """Give the message back to its queue as it is (shutdown)."""


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Redelivered: move it to the quarantine queue, to be handled alone, apart from the rest
    (``crashes``: the times it already killed its worker there)."""

    queue: str
    crashes: int = 0


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Attempt ``attempt`` (of ``attempts``) after ``delay`` seconds, through the broker
    (``delay=0``: back to the service queue at once, carrying the attempt: shutdown)."""

    attempt: int
    attempts: int
    delay: float
    event: str
    cause: BaseException


@dataclass(frozen=True, slots=True)
class HandBack:
    """No handler here for a message its queue is bound for: give a copy back to the queue,
    after ``delay`` seconds, for a process of the service that has one."""

    exchange: str
    delay: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Dead-letter it: failed for good after ``attempts`` attempts (``poison``: never tried)."""

    error_type: str
    error_message: str
    attempts: int
    event: str | None
    traceback_text: str = ""
    poison: bool = False


Verdict = Ack | Requeue | RetryLater | GiveUp | Quarantine | HandBack
ACK = Ack()
DUPLICATE = Ack(Outcome.DUPLICATE)  # the inbox had it: handled and committed before
REQUEUE = Requeue()


class Settler:
    """Settles the deliveries of one queue of ``service``."""

    def __init__(
        self, transport: Transport, *, service: str, dlq: str, retry: BrokerRetry | None = None
    ) -> None:
        self._transport = transport
        self._service = service
        self._dlq = dlq
        self._retry = retry
        self._reported: set[type[BaseException]] = set()

    async def settle(self, delivery: Delivery, verdict: Verdict) -> Outcome:
        """Carry out ``verdict`` for ``delivery``; return what became of it. Whatever goes
        wrong on the way (a bug, an error nobody foresaw), the delivery is settled: it goes
        back to its queue after a pause, and the error is logged once per kind."""
        try:
            if verdict is ACK:  # the common case, without another frame
                await delivery.ack()
                return Outcome.OK
            return await self._carry_out(delivery, verdict)
        except Exception as exc:
            if type(exc) not in self._reported:
                self._reported.add(type(exc))
                log.exception(
                    "%s: settling message %s failed; it goes back to the queue in %g s",
                    self._service,
                    delivery.message.message_id,
                    DEAD_LETTER_BACKOFF,
                )
            await asyncio.sleep(DEAD_LETTER_BACKOFF)
            with contextlib.suppress(Exception):  # a closed channel returns it anyway
                await delivery.reject(requeue=True)
            return Outcome.REQUEUED

    async def _carry_out(self, delivery: Delivery, verdict: Verdict) -> Outcome:
        if isinstance(verdict, Ack):
            await delivery.ack()
            return verdict.outcome
        if isinstance(verdict, Requeue):
            await delivery.reject(requeue=True)
            return Outcome.REQUEUED
        if isinstance(verdict, RetryLater):
            return await self._retry_later(delivery, verdict)
        if isinstance(verdict, Quarantine):
            return await self._quarantine(delivery, verdict)
        if isinstance(verdict, HandBack):
            return await self._hand_back(delivery, verdict)
        return await self._dead_letter(delivery, verdict)

    async def _quarantine(self, delivery: Delivery, verdict: Quarantine) -> Outcome:
        copy = with_crashes(delivery.message, verdict.crashes)
        if not copy.reply_to and ROUTING_KEY_HEADER not in copy.headers:  # for a replay
            copy.headers[ROUTING_KEY_HEADER] = routing_bucket(copy, delivery.routing_key)
        sent = self._transport.publish(copy, "", verdict.queue, mandatory=True)
        return await self._replace(delivery, sent, "quarantine", Outcome.QUARANTINED)

    async def _hand_back(self, delivery: Delivery, verdict: HandBack) -> Outcome:
        if self._retry is None:  # only event queues are bound to exchanges
            raise AssertionError("HandBack for a queue without broker retries")
        sent = self._retry.send(handed_back(delivery.message, verdict.exchange), verdict.delay)
        return await self._replace(delivery, sent, "hand back", Outcome.HANDED_BACK)

    async def _replace(
        self, delivery: Delivery, sent: Awaitable[object], what: str, outcome: Outcome
    ) -> Outcome:
        """Ack ``delivery`` once its copy is ``sent`` (confirmed); requeue it if not."""
        try:
            await sent
        except ChoreoError as exc:
            log.error("%s: could not %s a message (%s); requeued", self._service, what, exc)
            await asyncio.sleep(DEAD_LETTER_BACKOFF)
            await delivery.reject(requeue=True)
            return Outcome.REQUEUED
        await delivery.ack()
        return outcome

    async def _retry_later(self, delivery: Delivery, verdict: RetryLater) -> Outcome:
        if self._retry is None:  # a queue without retry queues: the last word is the DLQ
            raise AssertionError("RetryLater for a queue without broker retries")
        try:
            where = await self._retry.park(
                delivery.message, attempt=verdict.attempt, event=verdict.event, delay=verdict.delay
            )
        except ChoreoError as exc:
            log.error("%s: could not schedule a retry (%s); requeued", self._service, exc)
            await delivery.reject(requeue=True)
            return Outcome.REQUEUED
        await delivery.ack()
        cause = verdict.cause
        if not verdict.delay:
            log.info(
                "%s: %s failed during shutdown; back to %s for attempt %d/%d",
                self._service,
                verdict.event,
                where,
                verdict.attempt,
                verdict.attempts,
            )
            return Outcome.REQUEUED
        log.warning(
            "%s: %s failed (%s: %s); attempt %d/%d in %.1fs, through %s",
            self._service,
            verdict.event,
            type(cause).__name__,
            cause,
            verdict.attempt,
            verdict.attempts,
            verdict.delay,
            where,
        )
        return Outcome.RETRY

    async def _dead_letter(self, delivery: Delivery, verdict: GiveUp) -> Outcome:
        message = delivery.message
        try:
            await send_to_dlq(
                self._transport,
                self._dlq,
                message,
                error_type=verdict.error_type,
                error_message=verdict.error_message,
                attempts=verdict.attempts,
                service=self._service,
                event=verdict.event,
                traceback_text=verdict.traceback_text,
                routing_key=delivery.routing_key,
            )
        except ChoreoError as exc:
            log.error(
                "%s: could not dead-letter message %s (%s); it goes back to the queue in %g s",
                self._service,
                message.message_id,
                exc,
                DEAD_LETTER_BACKOFF,
            )
            await asyncio.sleep(DEAD_LETTER_BACKOFF)  # no tight redelivery loop meanwhile
            await delivery.reject(requeue=True)
            return Outcome.REQUEUED
        await delivery.ack()
        log.error(
            "%s: message %s (%s) dead-lettered to %s, %s: %s",
            self._service,
            message.message_id or "-",
            verdict.event,
            self._dlq,
            f"not attempted (poison: {verdict.error_type})"
            if verdict.poison
            else f"after {verdict.attempts} attempt(s): {verdict.error_type}",
            verdict.error_message[:300],
        )
        return Outcome.POISON if verdict.poison else Outcome.DEAD_LETTERED
