"""What choreo takes for "now" where time decides what happens: the store's due times
(delayed outbox rows, saga timeouts), its inbox and saga timestamps.

In production it is the system's clock. A test moves it forward instead of sleeping
(``choreo.testing``: ``h.advance(timedelta(minutes=15))``): every reading of ``CLOCK``
is then ahead of the system's clock by what was advanced, and whoever waits for a due
time (the outbox relays) is woken to look again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

__all__ = ["CLOCK", "Clock"]


class Clock:
    """The system's clock plus an offset that only tests set (``advance``, ``reset``)."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._delta = timedelta(0)
        self._wakes: set[Callable[[], None]] = set()

    def __repr__(self) -> str:
        return f"Clock(offset={self._offset:g}s)"

    @property
    def offset(self) -> float:
        """Seconds this clock is ahead of the system's clock (0 unless a test advanced it)."""
        return self._offset

    def time(self) -> float:
        """Now, in seconds since the epoch (``time.time()`` plus the offset)."""
        return time.time() + self._offset

    def utcnow(self) -> datetime:
        """Now, as the store's tables keep times: naive UTC."""
        now = datetime.now(UTC).replace(tzinfo=None)
        return now + self._delta if self._offset else now

    def advance(self, by: timedelta | float) -> None:
        """Move the clock forward by ``by`` (a ``timedelta`` or seconds) and wake whoever
        waits for a due time. For tests; time never goes back, except by :meth:`reset`."""
        seconds = by.total_seconds() if isinstance(by, timedelta) else float(by)
        if seconds < 0:
            raise ValueError(f"the clock only moves forward (advance({by!r}))")
        self._set(self._offset + seconds)

    def reset(self) -> None:
        """Back to the system's clock (the end of a test)."""
        self._set(0.0)

    def on_advance(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` whenever the clock is moved; returns the undo."""
        self._wakes.add(wake)
        return lambda: self._wakes.discard(wake)

    def _set(self, offset: float) -> None:
        self._offset = offset
        self._delta = timedelta(seconds=offset)
        for wake in list(self._wakes):
            wake()


CLOCK = Clock()
"""The clock of the process."""
