"""``choreo saga list|show``: the instances of a saga, read from its store's database.

The target is ``MODULE:ATTR`` naming a ``choreo.Saga``. Nothing is sent to the broker.
Times are printed in UTC, as the tables keep them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer

from .. import config
from ..errors import ChoreoError, ConfigurationError, ConnectionFailed
from ..saga import COMPLETED, RUNNING, Saga
from ._common import DebugOption, errors, fail
from .loader import load_object
from .outbox import _sqlite_file

__all__ = ["saga_app"]

TIMEOUT = 30.0  # seconds for the database to answer
T = TypeVar("T")

saga_app = typer.Typer(help="Inspect the instances of a choreo.Saga.", no_args_is_help=True)
TargetArgument = Annotated[
    str, typer.Argument(help="MODULE:ATTR of a choreo.Saga.", metavar="MODULE:ATTR")
]


def _saga(target: str) -> Saga[Any]:
    obj = load_object(target, "app.checkout:saga")
    if not isinstance(obj, Saga):
        raise ConfigurationError(f"{target!r} is a {type(obj).__name__}, not a choreo.Saga")
    return obj


def _read(saga: Saga[Any], read: Callable[[], Awaitable[T]]) -> T:
    """``read()`` against the saga's database, with one-line errors for a database that
    cannot be reached or has no saga tables."""
    import sqlalchemy as sa

    from ..sql.tables import SAGA

    store: Any = saga.store
    _sqlite_file(store)
    url = store.engine.url
    where = url.render_as_string(hide_password=True)

    async def run() -> T:
        try:
            async with asyncio.timeout(TIMEOUT), store.engine.connect() as connection:
                found = await connection.run_sync(
                    lambda sync: sa.inspect(sync).has_table(SAGA.name)
                )
            if not found:
                raise ChoreoError(f"{where} has no {SAGA.name} table: run store.create_tables()")
            async with asyncio.timeout(TIMEOUT):
                return await read()
        except (OSError, TimeoutError, sa.exc.DBAPIError) as exc:
            reason = getattr(exc, "orig", None) or exc
            text = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
            if isinstance(exc, TimeoutError) and not text:
                text = f"no answer in {TIMEOUT:.0f} s"
            text = config.scrub(text or type(reason).__name__, url.render_as_string(False))
            raise ConnectionFailed(f"cannot reach the database at {where}: {text}") from exc
        finally:
            await store.engine.dispose()

    return asyncio.run(run())


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


@saga_app.command("list")
def list_instances(
    target: TargetArgument,
    status: Annotated[
        str | None,
        typer.Option(help=f"Only instances with this status: {RUNNING} or {COMPLETED}."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, last updated first.")] = 100,
    debug: DebugOption = False,
) -> None:
    """The instances of a saga: key, status, version (events applied), last update.

    Example: choreo saga list app.checkout:saga --status running
    """
    with errors(debug):
        if status not in (None, RUNNING, COMPLETED):
            raise ConfigurationError(f"--status must be {RUNNING} or {COMPLETED}, not {status!r}")
        saga = _saga(target)
        found = _read(saga, lambda: saga.instances(status=status, limit=limit))
    if not found:
        typer.echo(f"saga {saga.name!r}: no {status + ' ' if status else ''}instances")
        return
    rows = [("KEY", "STATUS", "VERSION", "UPDATED")]
    rows += [(i.key, i.status, str(i.version), _when(i.updated_at)) for i in found]
    for line in _table(rows):
        typer.echo(line)


@saga_app.command("show")
def show(
    target: TargetArgument,
    key: Annotated[str, typer.Argument(help="The key of the instance (e.g. an order id).")],
    debug: DebugOption = False,
) -> None:
    """One instance of a saga: status, version, state, and the events applied to it.

    Example: choreo saga show app.checkout:saga o-1001
    """
    with errors(debug):
        saga = _saga(target)
        instance = _read(saga, lambda: saga.instance(key))
    if instance is None:
        fail(f"saga {saga.name!r} has no instance {key!r}")
    typer.echo(f"saga:     {instance.saga}")
    typer.echo(f"key:      {instance.key}")
    typer.echo(f"status:   {instance.status}")
    typer.echo(f"version:  {instance.version}")
    typer.echo(f"created:  {_when(instance.created_at)}")
    typer.echo(f"updated:  {_when(instance.updated_at)}")
    typer.echo("state:")
    for line in json.dumps(instance.state.model_dump(mode="json"), indent=2).splitlines():
        typer.echo(f"  {line}")
    typer.echo("history:")
    rows = [("VERSION", "HANDLED", "EVENT", "MESSAGE ID", "STATUS")]
    rows += [
        (str(s.version), _when(s.handled_at), s.event, s.message_id or "-", s.status)
        for s in instance.history
    ]
    for line in _table(rows):
        typer.echo(f"  {line}")
