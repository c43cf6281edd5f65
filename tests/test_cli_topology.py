"""`choreo topology --apply` declares exactly what the services need (checked with
rabbitmqctl list_bindings), and the printed plan matches it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from choreo import topology
from services import catalog, inventory, wishlist

from .conftest import IN_CI, Buses
from .test_cli import choreo_cmd

SERVICES = [inventory.service, catalog.service, wishlist.service]
TARGETS = ["services.inventory:service", "services.catalog:service", "services.wishlist:service"]


def bindings(namespace: str) -> set[tuple[str, str, str]]:
    """(exchange, queue, routing key) of every binding in ``namespace``, per rabbitmqctl."""
    if shutil.which("rabbitmqctl") is None:
        if IN_CI:
            pytest.fail("rabbitmqctl is needed to check the bindings", pytrace=False)
        pytest.skip("rabbitmqctl is not installed")
    listing = subprocess.run(
        ["rabbitmqctl", "list_bindings", "-q", "source_name", "destination_name", "routing_key"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    found = set()
    for line in listing.splitlines():
        source, destination, key = [*line.split("\t"), "", "", ""][:3]
        if source.startswith(namespace + "."):
            found.add((source, destination, key))
    return found


@pytest.mark.broker
@pytest.mark.parametrize("transport", ["rabbitmq"], indirect=True)
async def test_topology_apply_declares_every_binding_the_services_need(
    make_bus: Buses, namespace: str
) -> None:
    """The bindings on the broker are exactly the plan: fanout events to service queues,
    request names to the responder's request queue."""
    plan = topology.plan(SERVICES, namespace)
    make_bus.extra_queues |= {queue.name for queue in plan.queues}
    make_bus.extra_exchanges |= {name for name, _ in plan.exchanges}
    printed = await asyncio.to_thread(
        choreo_cmd, "topology", *TARGETS, "--apply", "--broker", make_bus.url,
        "--namespace", namespace,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert "declared on" in printed.stdout
    for queue in plan.queues:
        assert queue.name in printed.stdout
    expected = {
        (exchange, queue.name, key) for queue in plan.queues for exchange, key in queue.bindings
    }
    ns = namespace
    assert expected == {
        (f"{ns}.sku_received", f"{ns}.inventory", ""),
        (f"{ns}.sku_processed", f"{ns}.inventory", ""),
        (f"{ns}.sku_processed", f"{ns}.catalog", ""),
        (f"{ns}.sku_processed", f"{ns}.wishlist", ""),
        (f"{ns}.choreo.requests", f"{ns}.inventory.requests", "get_availability"),
    }
    assert await asyncio.to_thread(bindings, namespace) == expected
    bus = await make_bus()
    for queue in plan.queues:  # every queue exists, empty, nobody consuming
        assert await bus.transport.queue_size(queue.name) == 0
