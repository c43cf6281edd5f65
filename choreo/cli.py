"""The ``choreo`` command line (typer)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from . import __version__, cli_tools, config, dlq
from .bus import DEFAULT_CONCURRENCY, DEFAULT_PREFETCH, Bus, connect
from .cli_support import BrokerOption, DebugOption, NamespaceOption
from .cli_support import errors as _errors
from .cli_support import fail as _fail
from .loader import load_service
from .service import Service

if TYPE_CHECKING:
    from .metrics import PrometheusObserver

__all__ = ["app", "main"]

app = typer.Typer(
    name="choreo",
    help="Event-driven choreography between microservices over RabbitMQ.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

log = logging.getLogger("choreo")
T = TypeVar("T")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"choreo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Event-driven choreography between microservices over RabbitMQ."""


def _setup_logging(level: str, log_format: str = "text") -> int:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        _fail(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR", 2)
    if log_format not in ("text", "json"):
        _fail(f"unknown log format {log_format!r}: use text or json", 2)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from .observe import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=numeric, handlers=[handler])
    return numeric


@app.command()
def run(
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
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    log_format: Annotated[
        str, typer.Option(help="text, or json for one JSON object per line.")
    ] = "text",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Serve /metrics (Prometheus) and /healthz on this port; needs choreo[metrics]. "
            "With --workers N, worker k uses PORT+k.",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port.")] = "0.0.0.0",
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
    debug = debug or _setup_logging(log_level, log_format) <= logging.DEBUG
    with _errors(debug):
        services = [load_service(target) for target in targets]  # fail here, not N times
        if workers > 1:
            from .workers import supervise

            child_args = [*targets, "--prefetch", str(prefetch), "--concurrency", str(concurrency)]
            child_args += ["--shutdown-timeout", str(shutdown_timeout), "--log-level", log_level]
            child_args += ["--log-format", log_format, "--metrics-host", metrics_host]
            child_args += ["--debug"] if debug else []
            child_args += ["--namespace", namespace] if namespace is not None else []
            env = {"CHOREO_BROKER_URL": broker} if broker else {}
            raise typer.Exit(supervise(child_args, workers, env, metrics_port))
        from . import runner

        observer = None
        if metrics_port is not None:
            from .metrics import PrometheusObserver

            observer = PrometheusObserver()
        bus = connect(
            broker,
            namespace=namespace,
            prefetch=prefetch,
            concurrency=concurrency,
            shutdown_timeout=shutdown_timeout,
            connection_name=f"choreo run {','.join(s.name for s in services)}",
            observer=observer,
        )
        runner.run(_run(bus, services, observer, metrics_host, metrics_port))


async def _run(
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
        from .metrics import serve

        async with serve(bus, observer, metrics_host, metrics_port) as port:
            log.info("serving /metrics and /healthz on %s:%d", metrics_host, port)
            await bus.run(*services)


@app.command()
def topology(
    targets: Annotated[list[str], typer.Argument(help="Services, as MODULE:ATTRIBUTE.")],
    broker: BrokerOption = None,
    namespace: NamespaceOption = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Declare it all on the broker, then exit.")
    ] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of errors.")] = False,
) -> None:
    """Print the exchanges, queues and bindings the services need; --apply declares them.

    Example: choreo topology services.inventory:service services.catalog:service --apply

    Run it as a deploy step before anything publishes, so that no event is dropped for
    want of a queue. Declaring is idempotent.
    """
    from . import topology as plans

    with _errors(debug):
        services = [load_service(target) for target in targets]
        plan = plans.plan(services, config.namespace(namespace))
        typer.echo("exchanges")
        for name, kind in plan.exchanges:
            typer.echo(f"  {name}  ({kind}, durable)")
        typer.echo("queues (durable) and bindings")
        for queue in plan.queues:
            typer.echo(f"  {queue.name}")
            for exchange, key in queue.bindings:
                typer.echo(f"    <- {exchange}" + (f"  key={key}" if key else ""))
        if apply:

            async def declare() -> None:
                async with connect(broker, namespace=namespace) as bus:
                    await bus.declare(*services)

            asyncio.run(declare())
            typer.echo(f"declared on {config.redact(config.broker_url(broker))}")


dlq_app = typer.Typer(
    help="Inspect, replay and purge a service's dead-letter queue (<service>.dlq).",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")
ServiceArgument = Annotated[str, typer.Argument(help="Service name, e.g. catalog.")]


def _with_bus(broker: str | None, namespace: str | None, work: Callable[[Bus], Awaitable[T]]) -> T:
    async def run() -> T:
        async with connect(broker, namespace=namespace, connection_name="choreo dlq") as bus:
            return await work(bus)

    return asyncio.run(run())


@dlq_app.command("list")
def dlq_list(
    service: ServiceArgument,
    broker: BrokerOption = None,
    namespace: NamespaceOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    debug: DebugOption = False,
) -> None:
    """Show dead letters (event, error, attempts, failed-at, body) without consuming them.

    Example: choreo dlq list catalog --broker amqp://guest:guest@localhost:5672/
    """
    with _errors(debug):
        letters = _with_bus(
            broker, namespace, lambda bus: dlq.list_dead_letters(bus, service, limit)
        )
        if not letters:
            typer.echo(f"no dead letters for {service}")
            return
        for letter in letters:
            typer.echo(
                f"{letter.message_id}  {letter.event}  attempts={letter.attempts}  "
                f"failed-at={letter.failed_at}\n"
                f"    {letter.error_type}: {letter.error_message[:300]}\n"
                f"    body: {letter.preview}"
            )
        typer.echo(f"{len(letters)} dead letter(s) shown")


@dlq_app.command("replay")
def dlq_replay(
    service: ServiceArgument,
    message_id: Annotated[
        str | None, typer.Option("--id", help="Replay only the message with this id.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    broker: BrokerOption = None,
    namespace: NamespaceOption = None,
    debug: DebugOption = False,
) -> None:
    """Move dead letters back to the service's own queue, attempts reset to 1.

    Example: choreo dlq replay catalog --id 3f2a... (or --all)
    """
    if (message_id is None) == (not all_):
        _fail("say which: --id MESSAGE_ID or --all", 2)
    with _errors(debug):
        moved = _with_bus(broker, namespace, lambda bus: dlq.replay(bus, service, message_id))
    if message_id is not None and moved == 0:
        _fail(f"no dead letter with id {message_id!r} for {service}", 1)
    typer.echo(f"replayed {moved} message(s) to {service}")


@dlq_app.command("purge")
def dlq_purge(
    service: ServiceArgument,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    broker: BrokerOption = None,
    namespace: NamespaceOption = None,
    debug: DebugOption = False,
) -> None:
    """Delete every dead letter of the service (asks first, unless --yes)."""
    if not yes and not typer.confirm(f"Delete every dead letter of {service}?", default=False):
        _fail("nothing purged", 1)
    with _errors(debug):
        count = _with_bus(broker, namespace, lambda bus: dlq.purge(bus, service))
    typer.echo(f"purged {count} dead letter(s) of {service}")


cli_tools.register(app)  # graph, check, asyncapi, publish


def main() -> None:
    """Entry point of the ``choreo`` console script and of ``python -m choreo``."""
    app()
