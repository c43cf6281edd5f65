"""The ``choreo`` command line (typer): one module per command group.

* ``run.py``: ``choreo run`` (``workers.py`` for ``--workers``, ``loop.py`` for uvloop)
* ``topology.py``: ``choreo topology [--apply]``
* ``dlq.py``: ``choreo dlq list|replay|purge``
* ``publish.py``: ``choreo publish``
* ``outbox.py``: ``choreo outbox status``
* ``saga.py``: ``choreo saga list|show``
* ``tooling.py``: ``choreo graph``, ``check`` and ``asyncapi``
* ``_common.py``: the shared options, and errors as one line on stderr
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from . import dlq, outbox, publish, run, saga, tooling, topology

__all__ = ["app", "main"]

app = typer.Typer(
    name="choreo",
    help="Event-driven choreography between microservices over RabbitMQ.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


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


app.command()(run.run)
app.command()(topology.topology)
app.add_typer(dlq.dlq_app, name="dlq")
app.add_typer(outbox.outbox_app, name="outbox")
app.add_typer(saga.saga_app, name="saga")
app.command()(tooling.graph)
app.command()(tooling.check)
app.command()(tooling.asyncapi)
app.command()(publish.publish)


def main() -> None:
    """Entry point of the ``choreo`` console script and of ``python -m choreo``."""
    app()
