"""Retry policy of a handler: how many attempts, how long to wait, where to wait.

Short waits happen in the process (with tenacity), holding one of the service's
concurrency slots. Longer waits go through the broker, so a waiting message never holds up
the rest of the queue: the message is sent to a retry queue of the failing service whose
per-queue TTL is the wait, and which dead-letters back to that service's queue only (the
other services already handled the event). One retry queue per delay level:
``<service queue>.retry.<milliseconds>``; no RabbitMQ plugin is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["ATTEMPT_HEADER", "DEFAULT_RETRY", "Retry"]

ATTEMPT_HEADER = "x-choreo-attempt"


@dataclass(frozen=True, slots=True)
class Retry:
    """Try a failing handler ``attempts`` times in all (the first try counts).

    The wait before try ``n + 1`` is ``delay * multiplier ** (n - 1)``, at most ``max_delay``
    seconds. Waits up to ``in_process_max_delay`` seconds happen in the process; longer ones
    through the broker. Exceptions listed in ``give_up_on`` are not worth retrying: the
    message is dead-lettered at once, as it is when the handler raises ``choreo.Reject``.
    """

    attempts: int = 3
    delay: float = 0.2
    multiplier: float = 2.0
    max_delay: float = 60.0
    give_up_on: tuple[type[BaseException], ...] = ()
    in_process_max_delay: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError(f"Retry(attempts={self.attempts}): needs at least 1 attempt")
        if self.delay < 0 or self.max_delay < 0 or self.in_process_max_delay < 0:
            raise ConfigurationError("Retry: delays cannot be negative")
        if self.multiplier < 1:
            raise ConfigurationError(f"Retry(multiplier={self.multiplier}): must be >= 1")
        for exc_type in self.give_up_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise ConfigurationError(f"Retry(give_up_on=...): {exc_type!r} is no exception")

    def wait_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...)."""
        return float(min(self.max_delay, self.delay * self.multiplier ** max(0, attempt - 2)))

    def in_process(self, attempt: int) -> bool:
        """Whether the wait before ``attempt`` is short enough to happen in the process."""
        return self.wait_before(attempt) <= self.in_process_max_delay

    def broker_delays_ms(self) -> set[int]:
        """The delay levels (milliseconds) this policy sends through the broker."""
        return {
            round(self.wait_before(attempt) * 1000)
            for attempt in range(2, self.attempts + 1)
            if not self.in_process(attempt)
        }


DEFAULT_RETRY = Retry()
