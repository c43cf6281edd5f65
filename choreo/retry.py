"""Retry policy of a handler: how many attempts, how long to wait between them."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["DEFAULT_RETRY", "Retry"]


@dataclass(frozen=True, slots=True)
class Retry:
    """Try a failing handler ``attempts`` times in all (the first try counts).

    The wait before try ``n + 1`` is ``delay * multiplier ** (n - 1)``, at most ``max_delay``
    seconds. Exceptions listed in ``give_up_on`` are not worth retrying: the message is
    dead-lettered at once, as it is when the handler raises ``choreo.Reject``.
    """

    attempts: int = 3
    delay: float = 0.2
    multiplier: float = 2.0
    max_delay: float = 60.0
    give_up_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError(f"Retry(attempts={self.attempts}): needs at least 1 attempt")
        if self.delay < 0 or self.max_delay < 0:
            raise ConfigurationError("Retry: delay and max_delay cannot be negative")
        if self.multiplier < 1:
            raise ConfigurationError(f"Retry(multiplier={self.multiplier}): must be >= 1")
        for exc_type in self.give_up_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise ConfigurationError(f"Retry(give_up_on=...): {exc_type!r} is no exception")

    def wait_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...)."""
        return float(min(self.max_delay, self.delay * self.multiplier ** max(0, attempt - 2)))


DEFAULT_RETRY = Retry()
