"""What happened to each message: one log line per handled event, and optional metrics.

The consumer reports every settled delivery to the bus's ``Observer``: service, event,
message id, correlation id, attempt, outcome and duration. The default observer writes
one INFO log line with those fields as ``extra``, so ``--log-format json`` shows them as
keys (the reason of a retry or a dead letter has its own WARNING or ERROR line).
``choreo.metrics.PrometheusObserver`` adds counters and histograms on top.

Outcomes: ``ok``, ``retry`` (through the broker), ``requeued`` (shutdown),
``dead-lettered``, ``poison`` (dead-lettered without running the handler), and for
responders ``error`` (the requester got a ``RemoteError``).
"""

from __future__ import annotations

import json
import logging
import time

__all__ = ["OUTCOMES", "JsonFormatter", "Observer"]

OUTCOMES = ("ok", "retry", "requeued", "dead-lettered", "poison", "error")
_LEVEL = logging.INFO  # the reasons of retries and dead letters are logged where they happen

log = logging.getLogger("choreo.events")


class Observer:
    """Told of every handled message and every confirmed publish; logs the former."""

    def handled(
        self,
        service: str,
        event: str | None,
        outcome: str,
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
                message_id,
                outcome,
                duration * 1000,
                attempt,
                extra={
                    "service": service,
                    "event": event,
                    "message_id": message_id,
                    "correlation_id": correlation_id,
                    "attempt": attempt,
                    "outcome": outcome,
                    "duration_ms": round(duration * 1000, 3),
                },
            )

    def published(self, event: str, confirm_seconds: float) -> None:
        """A publish of ``event`` was confirmed after ``confirm_seconds``."""

    def in_flight(self, service: str, delta: int) -> None:
        """``delta`` deliveries of ``service`` started (+1) or settled (-1)."""


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
