"""The ``choreo`` command line (typer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Annotated, NoReturn

import typer

from . import __version__, config
from .bus import DEFAULT_CONCURRENCY, DEFAULT_PREFETCH, connect
from .errors import ChoreoError, ConfigurationError
from .loader import load_service
from .service import Service

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

BrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker",
        envvar="CHOREO_BROKER_URL",
        help="Broker URL: amqp://user:pass@host:5672/vhost or memory:// "
        f"[default: {config.DEFAULT_BROKER_URL}]",
        show_default=False,
    ),
]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        envvar="CHOREO_NAMESPACE",
        help="Prefix of every exchange and queue name (NS.event, NS.service).",
        show_default=False,
    ),
]


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


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"choreo: error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """choreo's errors as one line on stderr: exit 2 for configuration, 1 otherwise."""
    try:
        yield
    except ConfigurationError as exc:
        if debug:
            raise
        _fail(str(exc), 2)
    except ChoreoError as exc:
        if debug:
            raise
        _fail(str(exc), 1)


def _setup_logging(level: str) -> int:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        _fail(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR", 2)
    logging.basicConfig(
        level=numeric,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
    debug: Annotated[bool, typer.Option(help="Show tracebacks of errors.")] = False,
) -> None:
    """Run services: consume their queues until SIGINT or SIGTERM, then stop gracefully.

    Example: choreo run services.catalog:service services.wishlist:service --prefetch 128

    A service's own Service(prefetch=..., concurrency=...) takes precedence over the options.
    """
    debug = debug or _setup_logging(log_level) <= logging.DEBUG
    with _errors(debug):
        services = [load_service(target) for target in targets]
        asyncio.run(_run(services, broker, namespace, prefetch, concurrency, shutdown_timeout))


async def _run(
    services: list[Service],
    broker: str | None,
    namespace: str | None,
    prefetch: int,
    concurrency: int,
    shutdown_timeout: float,
) -> None:
    names = ",".join(s.name for s in services)
    bus = connect(
        broker,
        namespace=namespace,
        prefetch=prefetch,
        concurrency=concurrency,
        shutdown_timeout=shutdown_timeout,
        connection_name=f"choreo run {names}",
    )
    async with bus:
        log.info("connected to %s (namespace %r)", config.redact(bus.url), bus.namespace)
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


def main() -> None:
    """Entry point of the ``choreo`` console script and of ``python -m choreo``."""
    app()
