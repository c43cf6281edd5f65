"""``choreo topology``: print (and with ``--apply`` declare) what the services need; with
``--prune``, remove the bindings of their queues that none of their handlers wants."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from .. import config
from .. import topology as plans
from ..bus import connect
from ..service import Service
from ..tooling import bindings
from ._common import BrokerOption, DebugOption, NamespaceOption, errors, fail
from .loader import load_service

__all__ = ["topology"]


def topology(
    targets: Annotated[list[str], typer.Argument(help="Services, as MODULE:ATTRIBUTE.")],
    broker: BrokerOption = None,
    namespace: NamespaceOption = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Declare it all on the broker, then exit.")
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Unbind from the services' queues every exchange none of their handlers "
            "wants any more (after --apply when both are given).",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --prune: print what it would unbind, only.")
    ] = False,
    management: Annotated[
        str | None,
        typer.Option(
            "--management",
            envvar="CHOREO_MANAGEMENT_URL",
            help="RabbitMQ's management API (http://HOST:15672), where --prune lists "
            "bindings; without it, rabbitmqctl of this machine.",
            show_default=False,
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Print the exchanges, queues and bindings the services need; --apply declares them;
    --prune removes the bindings of their queues that no handler wants any more.

    Example: choreo topology services.inventory:service services.catalog:service --apply

    Run it as a deploy step before anything publishes, so that no event is dropped for
    want of a queue. Declaring is idempotent. After a deploy that drops a handler, --prune
    (--dry-run to see first) unbinds the event's exchange from the service's queue.
    """
    if dry_run and not prune:
        fail("--dry-run goes with --prune", 2)
    with errors(debug):
        services = [load_service(target) for target in targets]
        ns = config.namespace(namespace)
        url = config.broker_url(broker)
        plan = plans.plan(services, ns)
        typer.echo("exchanges")
        for name, kind in plan.exchanges:
            typer.echo(f"  {name}  ({kind}, durable)")
        typer.echo("queues (durable) and bindings")
        for queue in plan.queues:
            typer.echo(f"  {queue.name}")
            for exchange, key in _shown(queue.bindings):
                typer.echo(f"    <- {exchange}" + (f"  key={key}" if key else ""))
        if plan.exchange_bindings:
            typer.echo("exchange-to-exchange bindings")
        for destination, source, key in plan.exchange_bindings:
            typer.echo(f"  {destination} <- {source}" + (f"  key={key}" if key else ""))
        if prune:
            bindings.listing_method(url, management)  # no way to list: say so before declaring
        if apply or prune:
            asyncio.run(_on_the_broker(services, url, ns, apply, prune, dry_run, management))


def _shown(bindings: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """A partition queue's bucket bindings summed up in one line per exchange."""
    keys: dict[str, list[str]] = {}
    for exchange, key in bindings:
        keys.setdefault(exchange, []).append(key)
    shown: list[tuple[str, str]] = []
    for exchange, found in keys.items():
        if len(found) > 4 and all(key.isdigit() for key in found):
            step = int(found[1]) - int(found[0])
            found = [f"{len(found)} buckets {found[0]}, {found[1]}, ... (b % {step} == {found[0]})"]
        shown.extend((exchange, key) for key in found)
    return shown


async def _on_the_broker(
    services: list[Service],
    url: str,
    namespace: str,
    apply: bool,
    prune: bool,
    dry_run: bool,
    management: str | None,
) -> None:
    where = config.redact(url)
    async with connect(url, namespace=namespace, connection_name="choreo topology") as bus:
        if apply:
            await bus.declare(*services)
            typer.echo(f"declared on {where}")
        if not prune:
            return
        found = await bindings.stale_bindings(
            bus.transport, services, namespace, url, management=management
        )
        typer.echo(f"bindings listed by {found.source}")
        for queue in found.missing:
            typer.echo(f"  {queue}: not on the broker, nothing to prune")
        for stale in found.stale:
            if dry_run:
                typer.echo(f"would unbind {stale}")
                continue
            await bus.transport.unbind_queue(stale.queue, stale.exchange, stale.routing_key)
            typer.echo(f"unbound {stale}")
        if not found.stale:
            typer.echo(f"nothing stale: {len(found.checked)} queue(s) bound as the plan says")
        elif dry_run:
            typer.echo(f"dry run: {len(found.stale)} stale binding(s) left on {where}")
        else:
            typer.echo(f"pruned {len(found.stale)} stale binding(s) on {where}")
