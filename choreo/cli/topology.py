"""``choreo topology``: print (and with ``--apply`` declare) what the services need."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from .. import config
from .. import topology as plans
from ..bus import connect
from ._common import BrokerOption, DebugOption, NamespaceOption, errors
from .loader import load_service

__all__ = ["topology"]


def topology(
    targets: Annotated[list[str], typer.Argument(help="Services, as MODULE:ATTRIBUTE.")],
    broker: BrokerOption = None,
    namespace: NamespaceOption = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Declare it all on the broker, then exit.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Print the exchanges, queues and bindings the services need; --apply declares them.

    Example: choreo topology services.inventory:service services.catalog:service --apply

    Run it as a deploy step before anything publishes, so that no event is dropped for
    want of a queue. Declaring is idempotent.
    """
    with errors(debug):
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
