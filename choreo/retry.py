"""Retry policy of a handler: how many attempts, how long to wait, where to wait.

Short waits happen in the process (a tenacity loop), holding one of the service's
concurrency slots. Longer waits go through the broker, so a waiting message never holds up
the rest of the queue: the message is parked in a retry queue of the failing service whose
per-queue TTL is the wait, and which dead-letters back to that service's queue only (the
other services already handled the event). One retry queue per delay level:
``<service queue>.retry.<milliseconds>``; no RabbitMQ plugin is needed. How a message is
parked there is in ``_runtime/settle.py``; the queue itself in ``topology.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential,
)

from .errors import ConfigurationError

__all__ = ["DEFAULT_RETRY", "Retry"]


def _after(attempt: int) -> RetryCallState:
    """tenacity's state after ``attempt`` failed attempts (what its wait strategies read)."""
    state = RetryCallState(AsyncRetrying(), None, (), {})
    state.attempt_number = attempt
    return state


@dataclass(frozen=True, slots=True)
class Retry:
    """Try a failing handler ``attempts`` times in all (the first try counts).

    The wait before try ``n + 1`` is ``delay * multiplier ** (n - 1)``, at most ``max_delay``
    seconds (tenacity's ``wait_exponential``). Waits up to ``in_process_max_delay`` seconds
    happen in the process; longer ones through the broker. Exceptions listed in
    ``give_up_on`` are not worth retrying: the message is dead-lettered at once, as it is
    when the handler raises ``choreo.Reject``.
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

    @property
    def wait(self) -> wait_exponential:
        """The tenacity wait strategy: the wait after failed attempt ``n``."""
        return wait_exponential(multiplier=self.delay, exp_base=self.multiplier, max=self.max_delay)

    def wait_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...)."""
        return float(self.wait(_after(max(1, attempt - 1))))

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

    def in_process_attempts(
        self,
        first: int,
        *,
        give_up: tuple[type[BaseException], ...],
        stopping: Callable[[], bool],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> AsyncRetrying:
        """A tenacity loop of attempts ``first``, ``first + 1``, ... in this process.

        Attempt ``n`` of the message is the loop's attempt ``n - first + 1``. It stops
        after the last attempt, before a wait too long for the process (the broker's
        turn), when ``stopping()`` says the worker shuts down, and on a ``give_up``
        exception; then the last exception is raised again. It waits with ``sleep``.
        """
        offset = first - 1

        def stop(state: RetryCallState) -> bool:
            attempt = offset + state.attempt_number
            return attempt >= self.attempts or not self.in_process(attempt + 1) or stopping()

        def wait(state: RetryCallState) -> float:
            return self.wait_before(offset + state.attempt_number + 1)

        return AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(lambda exc: not isinstance(exc, give_up)),
            reraise=True,
            sleep=sleep,
        )


DEFAULT_RETRY = Retry()
