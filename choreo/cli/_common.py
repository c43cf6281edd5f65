"""What the commands of ``choreo`` share: the broker and namespace options, and errors
reported as one line on stderr."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, NoReturn

import typer

from .. import config
from ..errors import ChoreoError, ConfigurationError

__all__ = ["BrokerOption", "DebugOption", "NamespaceOption", "errors", "fail", "warn"]

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
DebugOption = Annotated[bool, typer.Option(help="Show tracebacks of errors.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """``choreo: error: MESSAGE`` on stderr, then exit ``code``."""
    typer.echo(f"choreo: error: {message}", err=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """``choreo: warning: MESSAGE`` on stderr."""
    typer.echo(f"choreo: warning: {message}", err=True)


@contextlib.contextmanager
def errors(debug: bool) -> Iterator[None]:
    """choreo's errors as one line on stderr: exit 2 for configuration, 1 otherwise."""
    try:
        yield
    except ConfigurationError as exc:
        if debug:
            raise
        fail(str(exc), 2)
    except ChoreoError as exc:
        if debug:
            raise
        fail(str(exc), 1)
