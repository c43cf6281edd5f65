"""``Bus.run``: consume until SIGINT/SIGTERM (or a queue that cannot be restored), then
stop gracefully; a second signal during the stop aborts the handlers still running."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["run_until_signalled"]

log = logging.getLogger("choreo")


async def run_until_signalled(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    failed: Callable[[], asyncio.Future[None] | None],
    abort: asyncio.Event,
    describe: Callable[[], str],
) -> None:
    """``start()``, wait for a signal or for ``failed()`` to fail, then ``stop()``.
    ``describe()`` says what the stop waits for; a second signal sets ``abort``."""
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stopped.is_set():
            stopped.set()
            log.info("stopping: %s (signal again to abort)", describe())
        elif not abort.is_set():
            log.warning("aborting the handlers still running now")
            abort.set()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        await start()
        failure = failed()
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stopped.wait())]
        if failure is not None:
            waits.append(failure)
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        waits[0].cancel()
        if failure is not None and failure in done:
            failure.result()  # raises: the service cannot go on consuming
    finally:
        try:
            await asyncio.shield(stop())
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
