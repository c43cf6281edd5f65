"""``choreo run --workers N``: N worker processes sharing the services' queues.

The parent starts N ``choreo run`` children (competing consumers on the same queues),
forwards SIGINT/SIGTERM to all of them, and waits for their graceful stop. A child that
dies on its own stops the others and makes the parent exit non-zero, so the supervisor
above (systemd, Docker's restart policy, Kubernetes) sees the failure and restarts it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

__all__ = ["supervise"]

log = logging.getLogger("choreo.workers")


def supervise(
    child_args: list[str],
    workers: int,
    env: dict[str, str] | None = None,
    metrics_port: int | None = None,
) -> int:
    """Run ``choreo run *child_args`` ``workers`` times; return the exit code for the parent.

    ``env`` is added to the children's environment (the broker URL goes there, not in
    argv, where ``ps`` would show its password). Worker ``k`` serves its metrics on
    ``metrics_port + k``."""
    command = [sys.executable, "-m", "choreo", "run", *child_args]
    environment = {**os.environ, **(env or {})}
    children = []
    for k in range(workers):
        port = [] if metrics_port is None else ["--metrics-port", str(metrics_port + k)]
        children.append(subprocess.Popen([*command, *port], env=environment))
    log.info("started %d workers: %s", workers, ", ".join(str(c.pid) for c in children))
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed = 0
        while any(child.poll() is None for child in children):
            for child in children:
                code = child.poll()
                if code is not None and code != 0 and not stopping:
                    log.error("worker %d exited with %d; stopping the others", child.pid, code)
                    failed = code
                    forward(signal.SIGTERM, None)
            time.sleep(0.1)
        codes = [child.returncode for child in children]
        return failed or next((code for code in codes if code != 0), 0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
