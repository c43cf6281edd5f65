"""``choreo run --workers N``: N worker processes sharing the services' queues.

The parent starts N worker processes (competing consumers on the same queues), each given
the command's parsed options (nothing is rebuilt as argv, and the broker URL never shows
in ``ps``). It forwards SIGINT/SIGTERM to all of them and waits
for their graceful stop. A worker that dies on its own stops the others and makes the
parent exit non-zero, so the supervisor above (systemd, Docker's restart policy,
Kubernetes) sees the failure and restarts it. Workers die with the parent, even when it is
killed with SIGKILL (Linux). Worker ``k`` serves its metrics on ``--metrics-port`` + ``k``.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

__all__ = ["supervise"]

log = logging.getLogger("choreo.workers")

T = TypeVar("T")

PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGTERM to this process when its parent dies (even by
    SIGKILL), so no worker outlives its supervisor. Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _run_worker(worker: Callable[[T, int], None], options: T, index: int) -> None:
    _die_with_parent()
    worker(options, index)


def supervise(count: int, worker: Callable[[T, int], None], options: T) -> int:
    """Run ``worker(options, k)`` in ``count`` processes (k = 0 .. count - 1); return the
    exit code for the parent. ``worker`` and ``options`` cross to the children by pickle."""
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_run_worker, args=(worker, options, k), name=f"choreo-worker-{k}")
        for k in range(count)
    ]
    for child in children:
        child.start()
    log.info("started %d workers: %s", len(children), ", ".join(str(c.pid) for c in children))
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed = 0
        while any(child.is_alive() for child in children):
            for child in children:
                code = child.exitcode
                if code is not None and code != 0 and not stopping:
                    log.error("worker %d exited with %d; stopping the others", child.pid, code)
                    failed = code
                    forward(signal.SIGTERM, None)
            time.sleep(0.1)
        for child in children:
            child.join()
        codes = [child.exitcode or 0 for child in children]
        return failed or next((code for code in codes if code != 0), 0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
