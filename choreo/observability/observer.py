"""The outcome of each handled message, and the observer told of it.

The consuming runtime reports every settled delivery to the bus's ``Observer``: service,
event, message id, correlation id, attempt, outcome and duration. The default observer
writes one INFO log line with those fields as ``extra``, so ``--log-format json`` shows
them as keys (the reason of a retry or a dead letter has its own WARNING or ERROR line).
``choreo.observability.metrics.PrometheusObserver`` adds counters and histograms on top.
"""

from __future__ import annotations

import enum
import logging

__all__ = ["OUTCOMES", "Observer", "Outcome"]


class Outcome(enum.StrEnum):
    """What became of one delivery."""

    OK = "ok"  # handled and acknowledged
    RETRY = "retry"  # parked in a retry queue of the broker for a later attempt
    REQUEUED = "requeued"  # handed back to its queue (shutdown)
    DEAD_LETTERED = "dead-lettered"  # the handler failed for good: in the service's DLQ
    POISON = "poison"  # dead-lettered without running the handler (cannot be decoded)
    ERROR = "error"  # a responder failed: the requester got a RemoteError
    QUARANTINED = "quarantined"  # redelivered: moved to be handled alone, apart from the rest
    DUPLICATE = "duplicate"  # the store's inbox had it: acked without running the handler
    SAGA_COMPLETED = "saga-completed"  # for a saga instance that is completed: ignored
    HANDED_BACK = "handed-back"  # no handler here: back to the queue for another process


OUTCOMES = tuple(outcome.value for outcome in Outcome)
_LEVEL = logging.INFO  # the reasons of retries and dead letters are logged where they happen

log = logging.getLogger("choreo.events")


class Observer:
    """Told of every handled message and every confirmed publish; logs the former."""

    def handled(
        self,
        service: str,
        event: str | None,
        outcome: Outcome,
        duration: float,
        attempt: int,
        message_id: str | None,
        correlation_id: str | None,
    ) -> None:
        if log.isEnabledFor(_LEVEL):
            log.log(
                _LEVEL,
                "%s handled %s %s: %s in %.1f ms (attempt %d)",
                service,
                event,
                message_id or "-",
                outcome.value,
                duration * 1000,
                attempt,
                extra={
                    "service": service,
                    "event": event,
                    "message_id": message_id,
                    "correlation_id": correlation_id,
                    "attempt": attempt,
                    "outcome": outcome.value,
                    "duration_ms": round(duration * 1000, 3),
                },
            )

    def published(self, event: str, confirm_seconds: float) -> None:
        """A publish of ``event`` was confirmed after ``confirm_seconds``."""

    def relayed(self, store: str, count: int) -> None:
        """The outbox relay of ``store`` published ``count`` rows (confirmed)."""

    def outbox_pending(self, store: str, pending: int) -> None:
        """``store``'s outbox holds ``pending`` rows not yet confirmed (every few seconds)."""
