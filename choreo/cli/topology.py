"""``choreo topology``: print (and with ``--apply`` declare) what the services need; with
``--prune``, remove the bindings of their queues that none of their handlers wants.

``--apply`` also rebinds a partitioned service whose partition count changed: once the new
plan is bound, it unbinds from the service's partition queues every bucket the plan no
longer gives them (else a bucket would reach two queues: each event twice), and deletes
its queues beyond the count (and its unpartitioned queue) when they are empty; one that
still holds messages, or is consumed, is kept and reported, with how to drain it."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from .. import config
from .. import topology as plans
from ..bus import Bus, connect
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
        bool,
        typer.Option(
            "--dry-run",
            help="With --apply or --prune: print what it would declare, rebind, unbind or "
            "delete, only.",
        ),
    ] = False,
    management: Annotated[
        str | None,
        typer.Option(
            "--management",
            envvar="CHOREO_MANAGEMENT_URL",
            help="RabbitMQ's management API (http://HOST:15672), where --prune (and "
            "--apply, for partitioned services) lists bindings and queues; without it, "
            "rabbitmqctl of this machine.",
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
    (--dry-run to see first) unbinds the event's exchange from the service's queue. A
    partitioned service whose partition count changed is rebound by --apply: stop its
    workers and let its queues drain first, or the order per key breaks meanwhile.
    """
    if dry_run and not (prune or apply):
        fail("--dry-run goes with --prune or --apply", 2)
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
        if prune or (apply and _partitioned(services)):
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
        if apply and dry_run:
            typer.echo(f"dry run: nothing declared on {where}")
        elif apply:
            await bus.declare(*services)
            typer.echo(f"declared on {where}")
        for service in _partitioned(services) if apply else ():
            await _repartition(bus, service, url, dry_run, management)
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


def _partitioned(services: list[Service]) -> list[Service]:
    return [service for service in services if service.handlers and service.partitions]


async def _repartition(
    bus: Bus, service: Service, url: str, dry_run: bool, management: str | None
) -> None:
    """Unbind what the plan of a partitioned service no longer binds to its queues, delete
    its queues beyond its count when empty, report the others (see the module's doc)."""
    transport, ns = bus.transport, bus.namespace
    found = await bindings.repartition(transport, service, ns, url, management=management)
    typer.echo(f"partitions of {service.name}: {found.partitions}, listed by {found.source}")
    if dry_run:
        for queue, exchange, keys in _grouped(found.unbound):
            typer.echo(f"  would bind {queue} <- {exchange}{_keys(keys)}")
    for queue, exchange, keys in _grouped(found.stale):
        for key in () if dry_run else keys:
            await transport.unbind_queue(queue, exchange, key)
        typer.echo(
            f"  {'would unbind' if dry_run else 'unbound'} {queue} <- {exchange}{_keys(keys)}"
        )
    kept, keep = 0, "would keep" if dry_run else "kept"
    for orphan in found.orphans:
        messages = max(orphan.messages, await transport.queue_size(orphan.name))
        if orphan.consumers:
            kept += 1
            typer.echo(
                f"  {keep} {orphan.name}: {messages} message(s), {orphan.consumers} consumer(s): "
                "a worker of the old partition count still runs; stop it, then --apply again"
            )
        elif messages:
            kept += 1
            typer.echo(
                f"  {keep} {orphan.name}: {messages} message(s), which no worker of "
                f"{found.partitions} partition(s) reads (unbound: nothing new reaches it)"
            )
        elif dry_run:
            typer.echo(f"  would delete {orphan.name}: empty, not a partition any more")
        else:
            await transport.delete_queue(orphan.name)
            typer.echo(f"  deleted {orphan.name}: empty, not a partition any more")
    if kept:
        exchange = plans.partition_exchange_name(ns, service.name)
        typer.echo(
            "  to drain a kept queue: run the old workers on it until it is empty (apply the "
            "old count, run them, apply the new count), or move its messages to "
            f"{exchange} keeping their routing keys (a shovel without dest-exchange-key); "
            "either way they come after newer events of their keys. --apply deletes it "
            "once it is empty"
        )
    if not (found.stale or found.orphans):
        typer.echo("  nothing to rebind: the partition queues are bound as the plan says")


def _grouped(stale: tuple[bindings.Stale, ...]) -> list[tuple[str, str, list[str]]]:
    """The routing keys of ``stale`` per (queue, exchange), in their order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for binding in stale:
        groups.setdefault((binding.queue, binding.exchange), []).append(binding.routing_key)
    return [(queue, exchange, keys) for (queue, exchange), keys in groups.items()]


def _keys(keys: list[str]) -> str:
    """``  key=K``, or ``  N keys K1, K2, K3, ...`` in numeric order (buckets)."""
    if keys == [""]:
        return ""
    if len(keys) == 1:
        return f"  key={keys[0]}"
    ordered = sorted(keys, key=lambda key: (len(key), key))
    return f"  {len(keys)} keys {', '.join(ordered[:3])}" + (", ..." if len(keys) > 3 else "")
