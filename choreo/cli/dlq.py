"""``choreo dlq list|replay|purge``: a service's dead-letter queue (``<service>.dlq``)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer

from .. import dlq
from ..bus import Bus, connect
from ._common import BrokerOption, DebugOption, NamespaceOption, errors, fail

__all__ = ["dlq_app"]

T = TypeVar("T")


def _indented(text: str) -> str:
    """Continuation lines (pydantic's errors have several) under the first, not at col 0."""
    return text.replace("\n", "\n      ")


dlq_app = typer.Typer(
    help="Inspect, replay and purge a service's dead-letter queue (<service>.dlq).",
    no_args_is_help=True,
)
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
    """Show dead letters (event, error, attempts, failed-at, the bucket of an event, body)
    without consuming them.

    Example: choreo dlq list catalog --broker amqp://guest:guest@localhost:5672/
    """
    with errors(debug):
        letters = _with_bus(
            broker, namespace, lambda bus: dlq.list_dead_letters(bus, service, limit)
        )
        if not letters:
            typer.echo(f"no dead letters for {service}")
            return
        for letter in letters:
            bucket = f"  bucket={letter.bucket}" if letter.bucket is not None else ""
            typer.echo(
                f"{letter.message_id}  {letter.event}  attempts={letter.attempts}  "
                f"failed-at={letter.failed_at}{bucket}\n"
                f"    {letter.error_type}: {_indented(letter.error_message[:300])}\n"
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
    """Move dead letters back to the service's own queue (a request to its request queue;
    an event of a partitioned service to the partition of its key, by the bucket it was
    routed with), attempts reset to 1, in batches, with progress on a terminal.

    Example: choreo dlq replay catalog --id 3f2a... (or --all)
    """
    if (message_id is None) == (not all_):
        fail("say which: --id MESSAGE_ID or --all", 2)
    progress = None
    if sys.stderr.isatty():

        def progress(moved: int, total: int) -> None:
            typer.echo(f"\rreplayed {moved}/{total}", err=True, nl=False)

    unknown: list[str | None] = []
    with errors(debug):
        moved = _with_bus(
            broker,
            namespace,
            lambda bus: dlq.replay(
                bus, service, message_id, progress=progress, by_message_id=unknown.append
            ),
        )
    if progress is not None:
        typer.echo("", err=True)
    if message_id is not None and moved == 0:
        fail(f"no dead letter with id {message_id!r} for {service}", 1)
    typer.echo(f"replayed {moved} message(s) to {service}")
    if unknown:
        typer.echo(
            f"{len(unknown)} of them recorded no routing key (dead-lettered by an older "
            "choreo): each went to the partition of its message id's bucket, which may "
            "not be its key's"
        )


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
        fail("nothing purged", 1)
    with errors(debug):
        count = _with_bus(broker, namespace, lambda bus: dlq.purge(bus, service))
    typer.echo(f"purged {count} dead letter(s) of {service}")
