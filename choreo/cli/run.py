"""``choreo run``: consume the services' queues until SIGINT or SIGTERM.

The command's parsed options become one :class:`RunOptions`; ``--workers N`` hands that
same object to N worker processes (``workers.py``), so every option reaches every worker.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from .. import config
from ..bus import Bus, connect
from ..observability.logs import HandlingFilter, JsonFormatter, TextFormatter
from ..service import Service
from ..settings import DEFAULT_CONCURRENCY, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PREFETCH
from . import loop
from ._common import BrokerOption, NamespaceOption, errors, fail
from .loader import load_service

if TYPE_CHECKING:
    from ..observability.metrics import PrometheusObserver

__all__ = ["RunOptions", "run", "serve", "worker"]

log = logging.getLogger("choreo")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Every option of ``choreo run``, as typer parsed them."""

    targets: list[str]
    broker: str | None
    namespace: str | None
    prefetch: int
    concurrency: int
    shutdown_timeout: float
    partition_heartbeat: float
    max_message_size: int
    log_level: str
    log_format: str
    metrics_port: int | None
    metrics_host: str
    workers: int
    debug: bool


def setup_logging(level: str, log_format: str = "text") -> int:
    """Log to stderr at ``level`` (plain text or JSON lines); return the numeric level."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        fail(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR", 2)
    if log_format not in ("text", "json"):
        fail(f"unknown log format {log_format!r}: use text or json", 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(HandlingFilter())  # the ids of the message handled, on every line
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    return numeric


def run(
    ctx: typer.Context,
    targets: Annotated[
        list[str],
        typer.Argument(
            help="Services to run, as MODULE:ATTRIBUTE (e.g. services.catalog:service)."
        ),
    ],
    broker: BrokerOption = None,
    namespace: NamespaceOption = None,
    prefetch: Annotated[
        int, typer.Option(min=1, help="Unacknowledged messages per service and process.")
    ] = DEFAULT_PREFETCH,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Handlers running at once per service and process.")
    ] = DEFAULT_CONCURRENCY,
    shutdown_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to let handlers finish on SIGINT/SIGTERM.")
    ] = 30.0,
    partition_heartbeat: Annotated[
        float,
        typer.Option(
            min=0.05,
            help="Seconds between the announcements by which the processes of a partitioned "
            "service share its partitions; one silent for 3 of them is taken for gone.",
        ),
    ] = 1.0,
    max_message_size: Annotated[
        int, typer.Option(min=1, help="Bodies over this many bytes are dead-lettered unread.")
    ] = DEFAULT_MAX_MESSAGE_SIZE,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    log_format: Annotated[
        str, typer.Option(help="text, or json for one JSON object per line.")
    ] = "text",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Serve /metrics (Prometheus) and /healthz on this port; needs choreo-mq[metrics]. "
            "With --workers N, worker k uses PORT+k.",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            help="Address for --metrics-port: loopback by default; in a container, pass "
            "0.0.0.0 so the orchestrator's probes reach /healthz."
        ),
    ] = "127.0.0.1",
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes sharing the queues (competing consumers).")
    ] = 1,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of errors.")] = False,
) -> None:
    """Run services: consume their queues until SIGINT or SIGTERM, then stop gracefully.

    Example: choreo run services.catalog:service services.wishlist:service --prefetch 128

    A service's own Service(prefetch=..., concurrency=...) takes precedence over the options.
    One log line per handled event (service, event, message id, correlation id, attempt,
    outcome, duration) at INFO; --log-level warning hides them.
    """
    options = RunOptions(**ctx.params)
    if options.workers > 1:
        level = setup_logging(options.log_level, options.log_format)
        with errors(options.debug or level <= logging.DEBUG):
            for target in options.targets:  # fail here once, not in every worker
                load_service(target)
        from .workers import supervise

        raise typer.Exit(supervise(options.workers, worker, options))
    serve(options)


def worker(options: RunOptions, index: int) -> None:
    """Worker process ``index`` of ``--workers``: metrics on ``--metrics-port`` + index."""
    port = options.metrics_port
    mine = dataclasses.replace(
        options, workers=1, metrics_port=None if port is None else port + index
    )
    try:
        serve(mine)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None


def serve(options: RunOptions) -> None:
    """One worker: load the services, connect, consume until told to stop."""
    level = setup_logging(options.log_level, options.log_format)
    shown = dataclasses.replace(options, broker=options.broker and config.redact(options.broker))
    log.debug("choreo run options: %s", shown)
    with errors(options.debug or level <= logging.DEBUG):
        services = [load_service(target) for target in options.targets]
        observer = None
        if options.metrics_port is not None:
            from ..observability.metrics import PrometheusObserver

            observer = PrometheusObserver()
        bus = connect(
            options.broker,
            namespace=options.namespace,
            prefetch=options.prefetch,
            concurrency=options.concurrency,
            shutdown_timeout=options.shutdown_timeout,
            partition_heartbeat=options.partition_heartbeat,
            max_message_size=options.max_message_size,
            connection_name=f"choreo run {','.join(s.name for s in services)}",
            observer=observer,
        )
        loop.run(_consume(bus, services, observer, options.metrics_host, options.metrics_port))


async def _consume(
    bus: Bus,
    services: list[Service],
    observer: PrometheusObserver | None,
    metrics_host: str,
    metrics_port: int | None,
) -> None:
    async with bus:
        log.info("connected to %s (namespace %r)", config.redact(bus.url), bus.namespace)
        if observer is None or metrics_port is None:
            await bus.run(*services)
            return
        from ..observability.metrics import serve as serve_metrics

        async with serve_metrics(bus, observer, metrics_host, metrics_port) as port:
            log.info("serving /metrics and /healthz on %s:%d", metrics_host, port)
            await bus.run(*services)
