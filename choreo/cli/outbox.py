"""``choreo outbox status``: what a store's outbox holds, read from its database.

The target is ``MODULE:ATTR`` naming a ``choreo.sql.Store`` (or a ``Service`` with a store:
its ``.store``). Nothing is sent to the broker: ``--broker`` and ``--namespace`` are
accepted like everywhere else, and the namespace printed is the one the relays of
``choreo run`` publish under with those options. SQLAlchemy (the ``sql`` extra) is
imported here, when the command runs, never when ``choreo`` starts.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .. import config
from ..errors import ChoreoError, ConfigurationError, ConnectionFailed
from ..service import Service
from ..topology import exchange_name
from ._common import BrokerOption, DebugOption, NamespaceOption, errors
from .loader import load_object

if TYPE_CHECKING:
    from ..sql import OutboxStatus, Store

__all__ = ["age", "outbox_app"]

TIMEOUT = 30.0  # seconds for the database to answer

outbox_app = typer.Typer(
    help="Inspect the transactional outbox of a choreo.sql.Store.", no_args_is_help=True
)
TargetArgument = Annotated[
    str,
    typer.Argument(
        help="MODULE:ATTR of a choreo.sql.Store, or of a Service with a store.",
        metavar="MODULE:ATTR",
    ),
]


def age(seconds: float) -> str:
    """A duration for people: ``3.2 s``, ``4 min``, ``2.5 h``, ``3.0 d``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _store(target: str) -> Store:
    try:
        from ..sql import Store
    except ImportError as exc:  # the sql extra is not installed
        raise ConfigurationError(str(exc)) from None
    obj = load_object(target, "app.db:store")
    if isinstance(obj, Service):
        if obj.store is None:
            raise ConfigurationError(f"{target!r}: service {obj.name!r} has no store")
        obj = obj.store
    if not isinstance(obj, Store):
        raise ConfigurationError(
            f"{target!r} is a {type(obj).__name__}, not a choreo.sql.Store (or a Service with one)"
        )
    return obj


def _sqlite_file(store: Store) -> None:
    """A SQLite file that does not exist: say so (connecting would create it, empty)."""
    url = store.engine.url
    path = url.database or ""
    if url.get_backend_name() != "sqlite" or path in ("", ":memory:") or path.startswith("file:"):
        return
    if not Path(path).is_file():
        where = url.render_as_string(hide_password=True)
        raise ConnectionFailed(
            f"cannot open the database at {where}: no file {path} (store.create_tables() makes it)"
        )


async def _status(store: Store) -> tuple[OutboxStatus, datetime]:
    """``store.status()`` and the time it was read (naive UTC, as the tables keep it), with
    one-line errors for an unreachable database or missing tables."""
    import sqlalchemy as sa

    from ..sql.tables import OUTBOX, utcnow

    url = store.engine.url
    where = url.render_as_string(hide_password=True)
    try:
        async with asyncio.timeout(TIMEOUT), store.engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: sa.inspect(sync).has_table(OUTBOX.name))
        if not tables:
            raise ChoreoError(f"{where} has no {OUTBOX.name} table: run store.create_tables()")
        async with asyncio.timeout(TIMEOUT):
            return await store.status(), utcnow()
    except (OSError, TimeoutError, sa.exc.DBAPIError) as exc:
        reason = getattr(exc, "orig", None) or exc
        text = str(reason).strip().splitlines()[0] if str(reason).strip() else ""
        if isinstance(exc, TimeoutError) and not text:
            text = f"no answer in {TIMEOUT:.0f} s"
        text = config.scrub(text or type(reason).__name__, url.render_as_string(False))
        raise ConnectionFailed(f"cannot reach the database at {where}: {text}") from exc
    finally:
        await store.engine.dispose()


@outbox_app.command("status")
def status(
    target: TargetArgument,
    broker: BrokerOption = None,
    namespace: NamespaceOption = None,
    debug: DebugOption = False,
) -> None:
    """Rows waiting to be published (and how old the oldest is), rows failing with the last
    error, sent rows still kept. Reads the database only.

    Example: choreo outbox status app.db:store --namespace shop
    """
    del broker  # accepted like everywhere; the status is read from the database alone
    with errors(debug):
        store = _store(target)
        _sqlite_file(store)
        found, now = asyncio.run(_status(store))
    where = store.engine.url.render_as_string(hide_password=True)
    ns = config.namespace(namespace)
    oldest = ""
    if found.oldest_pending is not None:
        oldest = f" (oldest {age((now - found.oldest_pending).total_seconds())} ago)"
    failing = ""
    if found.last_error:
        failing = f" (last error: {' / '.join(found.last_error.strip().splitlines())})"
    typer.echo(f"store:     {store.name}" + ("" if store.name == where else f" ({where})"))
    typer.echo(f"namespace: {ns or '(none)'} (relays publish to {exchange_name(ns, '<event>')})")
    typer.echo(f"pending:   {found.pending}{oldest}")
    typer.echo(f"failing:   {found.failing}{failing}")
    typer.echo(f"sent:      {found.sent} kept")
