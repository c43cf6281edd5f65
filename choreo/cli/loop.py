"""The worker's event loop: uvloop when it is installed (``pip install choreo-mq[fast]``).

Unlike ``asyncio.run``, :func:`run` does not wait forever for tasks left behind at the end
(a handler that ignores its cancellation): it cancels them, gives them a moment, and
closes the loop, so a stopped worker exits shortly after its shutdown timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "run"]

log = logging.getLogger("choreo")

T = TypeVar("T")
LEFT_BEHIND_GRACE = 1.0  # seconds


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if uvloop is importable, else None (asyncio's own loop)."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to the end on a new loop (uvloop when available), then close the loop
    without waiting for tasks that will not end."""
    factory = loop_factory()
    loop = factory() if factory is not None else asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                done, stuck = loop.run_until_complete(asyncio.wait(left, timeout=LEFT_BEHIND_GRACE))
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        log.debug("task %s ended with %r", task, task.exception())
                if stuck:
                    log.warning("%d task(s) ignore cancellation; exiting without them", len(stuck))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
