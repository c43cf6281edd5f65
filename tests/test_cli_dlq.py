"""`choreo dlq list|replay|purge` and quorum queues, on a real RabbitMQ."""

from __future__ import annotations

import asyncio
import subprocess

import aio_pika
import aiormq
import pytest

from choreo import Bus, Context, Event, Retry, Service, topology, wire

from .conftest import Buses
from .test_cli import choreo_cmd
from .test_dlq_partitions import A, B, Catalog, StockCounted, partition_queue, queued

pytestmark = pytest.mark.broker


@pytest.fixture
def transport() -> str:
    return "rabbitmq"


class OrderPlaced(Event):
    order: str


async def dead_letters(make_bus: Buses, count: int) -> tuple[Bus, list[str]]:
    service = Service("billing", retry=Retry(attempts=1))

    @service.on(OrderPlaced)
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        raise ValueError(f"card declined for {event.order}")

    bus = await make_bus()
    await bus.start(service)
    ids = [await bus.publish(OrderPlaced(order=f"o-{i}")) for i in range(count)]
    async with asyncio.timeout(20):
        while await bus.transport.queue_size(f"{bus.namespace}.billing.dlq") < count:
            await asyncio.sleep(0.02)
    await bus.stop()
    return bus, ids


def cli(bus: Bus, *args: str) -> subprocess.CompletedProcess[str]:
    return choreo_cmd(*args, "--broker", bus.url, "--namespace", bus.namespace)


async def test_list_shows_each_dead_letter_and_keeps_it(make_bus: Buses) -> None:
    """choreo dlq list: id, event, error, attempts, failed-at, body; nothing consumed."""
    bus, ids = await dead_letters(make_bus, 2)
    result = await asyncio.to_thread(cli, bus, "dlq", "list", "billing")
    assert result.returncode == 0, result.stderr
    for message_id in ids:
        assert message_id in result.stdout
    assert "ValueError: card declined for o-0" in result.stdout
    assert "order_placed" in result.stdout
    assert "attempts=1" in result.stdout
    assert '"order":"o-1"' in result.stdout
    assert "2 dead letter(s) shown" in result.stdout
    assert await bus.transport.queue_size(f"{bus.namespace}.billing.dlq") == 2


async def test_replay_by_id_then_all_then_purge(make_bus: Buses) -> None:
    """replay --id moves one message to billing's queue; --all the rest; purge empties."""
    bus, ids = await dead_letters(make_bus, 3)
    queue, dlq = f"{bus.namespace}.billing", f"{bus.namespace}.billing.dlq"
    one = await asyncio.to_thread(cli, bus, "dlq", "replay", "billing", "--id", ids[1])
    assert one.returncode == 0, one.stderr
    assert "replayed 1 message(s)" in one.stdout
    assert await bus.transport.queue_size(queue) == 1
    assert await bus.transport.queue_size(dlq) == 2
    async with bus.transport.fetch(queue, 1) as (delivery,):
        assert delivery.message.message_id == ids[1]
        assert "x-choreo-error-type" not in delivery.message.headers
        assert "x-choreo-attempts" not in delivery.message.headers
    rest = await asyncio.to_thread(cli, bus, "dlq", "replay", "billing", "--all")
    assert "replayed 2 message(s)" in rest.stdout
    assert await bus.transport.queue_size(queue) == 3
    for _ in range(3):  # back to the DLQ, for the purge
        async with bus.transport.fetch(queue, 1) as (delivery,):
            await bus.transport.publish(delivery.message, "", dlq)
            await delivery.ack()
    purged = await asyncio.to_thread(cli, bus, "dlq", "purge", "billing", "--yes")
    assert "purged 3 dead letter(s)" in purged.stdout
    assert await bus.transport.queue_size(dlq) == 0


async def test_bad_dlq_commands_are_clear_errors(make_bus: Buses) -> None:
    """Neither --id nor --all, an unknown id, an unknown service, purge unconfirmed."""
    bus, _ = await dead_letters(make_bus, 1)
    neither = await asyncio.to_thread(cli, bus, "dlq", "replay", "billing")
    assert neither.returncode == 2
    assert "--id MESSAGE_ID or --all" in neither.stderr
    unknown = await asyncio.to_thread(cli, bus, "dlq", "replay", "billing", "--id", "nope")
    assert unknown.returncode == 1
    assert "no dead letter with id 'nope'" in unknown.stderr
    missing = await asyncio.to_thread(cli, bus, "dlq", "list", "no-such-service")
    assert missing.returncode == 2
    assert "no queue" in missing.stderr
    assert "Traceback" not in missing.stderr
    unconfirmed = await asyncio.to_thread(cli, bus, "dlq", "purge", "billing")
    assert unconfirmed.returncode != 0
    assert await bus.transport.queue_size(f"{bus.namespace}.billing.dlq") == 1


async def test_quorum_service_declares_quorum_queues(make_bus: Buses) -> None:
    """Service(queue_type="quorum"): its queues are quorum queues, and it works."""
    seen: list[str] = []
    service = Service("ledger", queue_type="quorum")

    @service.on(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        seen.append(event.order)

    bus = await make_bus()
    await bus.start(service)
    await bus.publish(OrderPlaced(order="q-1"))
    async with asyncio.timeout(20):
        while not seen:
            await asyncio.sleep(0.02)
    connection = await aio_pika.connect(bus.url)
    try:
        for queue in (f"{bus.namespace}.ledger", f"{bus.namespace}.ledger.dlq"):
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="quorum"):
                await channel.declare_queue(
                    queue, durable=True, arguments={"x-queue-type": "classic"}
                )
    finally:
        await connection.close()


async def test_a_multi_line_error_stays_indented_and_poison_says_not_attempted(
    make_bus: Buses, caplog: pytest.LogCaptureFixture
) -> None:
    """A payload that fails validation (pydantic's error spans several lines): every line
    of its entry in choreo dlq list is indented under the message id; the worker's log
    says "not attempted (poison: ...)", not "after 0 attempt(s)"."""
    service = Service("billing")

    @service.on(OrderPlaced)
    async def bill(event: OrderPlaced) -> None:
        raise AssertionError("an invalid payload never reaches the handler")

    bus = await make_bus()
    await bus.start(service)
    with caplog.at_level("ERROR", logger="choreo"):
        await bus.publish_json("order_placed", {"wrong": "field"})
        async with asyncio.timeout(20):
            while await bus.transport.queue_size(f"{bus.namespace}.billing.dlq") < 1:
                await asyncio.sleep(0.02)
    await bus.stop()
    logged = " ".join(record.getMessage() for record in caplog.records)
    assert "not attempted (poison: ValidationError)" in logged
    assert "after 0 attempt" not in logged
    result = await asyncio.to_thread(cli, bus, "dlq", "list", "billing")
    assert result.returncode == 0, result.stderr
    entry = result.stdout.splitlines()[:-1]  # the last line is the count
    assert "ValidationError" in result.stdout
    assert len(entry) > 3
    assert all(line.startswith("    ") for line in entry[1:])


async def test_replay_of_a_partitioned_service_goes_to_each_keys_partition(
    make_bus: Buses,
) -> None:
    """choreo dlq replay --all on a partitioned service (#14): each dead event goes to the
    partition of its key; one that recorded no routing key (as a dead letter of an older
    choreo) goes by its message id's bucket, and the output says so."""
    catalog = Catalog(rejected={A, B})
    bus = await make_bus()
    await bus.start(catalog.service())
    await bus.publish(StockCounted(sku=A, seq=0))
    b_id = await bus.publish(StockCounted(sku=B, seq=0))
    dlq = topology.dlq_name(bus.namespace, "catalog")
    async with asyncio.timeout(20):
        while await bus.transport.queue_size(dlq) < 2:
            await asyncio.sleep(0.02)
    await bus.stop()
    async with bus.transport.fetch(dlq, 2) as letters:  # B's loses its routing key
        for letter in letters:
            if letter.message.message_id == b_id:
                del letter.message.headers[wire.ROUTING_KEY_HEADER]
            await bus.transport.publish(letter.message, "", dlq, mandatory=True)
            await letter.ack()

    listed = await asyncio.to_thread(cli, bus, "dlq", "list", "catalog")
    assert f"bucket={topology.routing_key_of(A, None)}" in listed.stdout
    assert listed.stdout.count("bucket=") == 1  # B's says none

    result = await asyncio.to_thread(cli, bus, "dlq", "replay", "catalog", "--all")

    assert result.returncode == 0, result.stderr
    assert "replayed 2 message(s) to catalog" in result.stdout
    assert "1 of them recorded no routing key" in result.stdout
    assert await queued(bus, partition_queue(bus, topology.routing_key_of(A, None))) == [(A, 0)]
    by_id = partition_queue(bus, topology.routing_key_of(None, b_id))
    assert (B, 0) in await queued(bus, by_id)
    catalog.open = True
    other = await make_bus()
    await other.start(catalog.service())
    await catalog.seen.wait_until(lambda items: {(A, 0), (B, 0)} <= set(items))
