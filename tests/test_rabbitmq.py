"""The wire contract on a real RabbitMQ, checked with plain aio-pika on the other side.

A service written without choreo, in any language, must be able to read choreo's
messages and publish messages that choreo services handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime

import aio_pika
import pytest

import choreo
from choreo import ConfigurationError, ConnectionFailed, Context, Event, Service, connect
from choreo.transports.base import Delivery, Message, QueueSpec

from .conftest import Buses
from .helpers import WAIT, Barrier, Recorder

pytestmark = pytest.mark.broker


@pytest.fixture
def transport() -> str:
    """Every test of this module runs on RabbitMQ only."""
    return "rabbitmq"


class SkuReceived(Event):
    sku: str
    quantity: int


async def test_plain_aio_pika_consumer_reads_choreo_messages(make_bus: Buses) -> None:
    """A foreign queue bound to the event's exchange gets the documented properties."""
    bus = await make_bus()
    exchange_name = f"{bus.namespace}.sku_received"
    connection = await aio_pika.connect(bus.url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange)
        message_id = await bus.publish(
            SkuReceived(sku="A1", quantity=3), correlation_id="corr-1", headers={"k": "v"}
        )
        incoming = await queue.get(timeout=10)
        await incoming.ack()
        assert json.loads(incoming.body) == {"sku": "A1", "quantity": 3}
        assert incoming.content_type == "application/json"
        assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert incoming.message_id == message_id
        assert incoming.type == "sku_received"
        assert incoming.correlation_id == "corr-1"
        assert isinstance(incoming.timestamp, datetime)
        assert incoming.headers["k"] == "v"
        assert incoming.exchange == exchange_name
    finally:
        await connection.close()
    make_bus.extra_exchanges.add(exchange_name)


async def test_topology_is_durable_fanout_and_durable_queues(make_bus: Buses) -> None:
    """After bus.start, passive declarations find the exchange, the queue and the DLQ, the
    queue is bound to the exchange, and the documented settings are the ones declared."""
    service = Service("inventory")

    @service.on(SkuReceived)
    async def handle(event: SkuReceived) -> None:
        pass

    bus = await make_bus()
    await bus.start(service)
    await bus.stop()  # nothing consumes: what the exchange routes stays in the queue
    connection = await aio_pika.connect(bus.url)
    try:
        channel = await connection.channel()
        # Passive: NOT_FOUND unless bus.start declared it; a passive declaration creates nothing.
        exchange = await channel.declare_exchange(f"{bus.namespace}.sku_received", passive=True)
        queue = await channel.declare_queue(f"{bus.namespace}.inventory", passive=True)
        await channel.declare_queue(f"{bus.namespace}.inventory.dlq", passive=True)
        # The binding: a message published to the exchange lands in the service queue.
        await exchange.publish(
            aio_pika.Message(b'{"sku": "A1", "quantity": 1}', message_id="bound?"),
            routing_key="",
        )
        incoming = await queue.get(timeout=10)  # QueueEmpty if nothing arrived
        await incoming.ack()
        assert incoming.message_id == "bound?"
        # Re-declaring with identical settings is accepted; other settings would close the
        # channel with PRECONDITION_FAILED.
        await channel.declare_exchange(
            f"{bus.namespace}.sku_received", aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_lettering = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{bus.namespace}.inventory.dlq",
        }
        await channel.declare_queue(
            f"{bus.namespace}.inventory", durable=True, arguments=dead_lettering
        )
        await channel.declare_queue(
            f"{bus.namespace}.inventory.suspect", durable=True, arguments=dead_lettering
        )
        await channel.declare_queue(f"{bus.namespace}.inventory.dlq", durable=True)
    finally:
        await connection.close()


async def test_plain_json_from_a_foreign_publisher_is_handled(make_bus: Buses) -> None:
    """A bare aio-pika publish (no type, no content type) to the exchange reaches the handler."""
    seen = Recorder()
    service = Service("inventory")

    @service.on(SkuReceived)
    async def handle(event: SkuReceived, ctx: Context) -> None:
        seen.add((event, ctx.event_name))

    bus = await make_bus()
    await bus.start(service)
    connection = await aio_pika.connect(bus.url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{bus.namespace}.sku_received")
        await exchange.publish(aio_pika.Message(b'{"sku": "B2", "quantity": 7}'), routing_key="")
        ((event, event_name),) = await seen.wait_for(1)
    finally:
        await connection.close()
    assert event == SkuReceived(sku="B2", quantity=7)
    assert event_name == "sku_received"


async def test_two_processes_of_a_service_share_its_queue(make_bus: Buses) -> None:
    """Two buses running the same service are competing consumers: each message once."""
    seen, barrier = Recorder(), Barrier()

    def make_service(instance: str) -> Service:
        service = Service("inventory", prefetch=1)

        @service.on(SkuReceived)
        async def handle(event: SkuReceived) -> None:
            await asyncio.sleep(0.01)
            seen.add((instance, event.sku))

        return barrier.join(service, instance)

    one, two = await make_bus(), await make_bus()
    await one.start(make_service("one"))
    await two.start(make_service("two"))
    await asyncio.gather(*(one.publish(SkuReceived(sku=str(i), quantity=1)) for i in range(40)))
    items = await seen.wait_for(40)
    await barrier.cross(one, one, two)  # each process handled a sentinel: nothing else comes
    assert sorted(int(sku) for _, sku in items) == list(range(40))
    assert {instance for instance, _ in items} == {"one", "two"}


async def test_unreachable_broker_is_a_clear_connection_error() -> None:
    """Nothing listens: ConnectionFailed naming the URL without its password."""
    with pytest.raises(ConnectionFailed) as info:
        async with connect("amqp://guest:s3cret@127.0.0.1:1/"):
            pass
    assert "127.0.0.1:1" in str(info.value)
    assert "s3cret" not in str(info.value)


async def test_wrong_credentials_are_a_clear_connection_error(broker_url: str) -> None:
    """The broker refuses the login: ConnectionFailed, password redacted."""
    url = broker_url.replace("guest:guest@", "guest:not-the-password@")
    with pytest.raises(ConnectionFailed) as info:
        async with connect(url):
            pass
    assert "not-the-password" not in str(info.value)


async def test_queue_declared_elsewhere_with_other_settings_is_a_configuration_error(
    make_bus: Buses,
) -> None:
    """An existing non-durable queue of the same name is reported, not silently reused."""
    bus = await make_bus()
    queue = f"{bus.namespace}.inventory"
    make_bus.extra_queues.add(queue)
    connection = await aio_pika.connect(bus.url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=False, auto_delete=True)
        service = Service("inventory")

        @service.on(SkuReceived)
        async def handle(event: SkuReceived) -> None:
            pass

        with pytest.raises(ConfigurationError, match="exists with other settings"):
            await bus.start(service)
    finally:
        await connection.close()


async def test_settling_a_delivery_twice_keeps_the_channel_alive(make_bus: Buses) -> None:
    """ack then reject (a handler cancelled after its ack): the second settle is ignored,
    the message is not requeued, and the consumer's channel goes on delivering."""
    bus = await make_bus()
    queue = f"{bus.namespace}.twice"
    await bus.transport.declare_queue(QueueSpec(queue))
    make_bus.extra_queues.add(queue)
    seen, settled, sentinel = Recorder(), Recorder(), asyncio.Event()

    async def settle_twice(delivery: Delivery) -> None:
        if delivery.message.body == b"sentinel":
            await delivery.ack()
            sentinel.set()
            return
        seen.add(delivery.message.body)
        await delivery.ack()
        await delivery.reject(requeue=True)
        settled.add(delivery.message.body)

    consumer = await bus.transport.consume(queue, settle_twice, prefetch=10)
    try:
        await bus.transport.publish(Message(body=b"first"), "", queue)
        await seen.wait_for(1)
        await bus.transport.publish(Message(body=b"second"), "", queue)
        assert await seen.wait_for(2) == [b"first", b"second"]
        await settled.wait_for(2)  # both settled twice: a wrong requeue was sent by now
        await bus.transport.publish(Message(body=b"sentinel"), "", queue)
        async with asyncio.timeout(WAIT):
            await sentinel.wait()  # a wrongly requeued message would have come back first
        assert seen.items == [b"first", b"second"]
    finally:
        await consumer.close()
    assert await bus.transport.queue_size(queue) == 0


def _amqp_connection(bus: choreo.Bus) -> object:
    """The AMQP connection under the bus right now (a new object after a reconnect)."""
    robust = bus.transport._connection  # type: ignore[attr-defined]
    return robust.transport.connection


async def test_cancelling_a_short_operation_at_any_point_keeps_the_connection(
    make_bus: Buses,
) -> None:
    """A task cancelled inside queue_size (channel open, passive declare or channel close)
    leaves the connection as it was. aiormq answers a cancelled Channel.Close with a
    second Channel.Close, which RabbitMQ punishes by closing the whole connection
    (CHANNEL_ERROR - expected 'channel.open'): every consumer on it lost its deliveries."""
    bus = await make_bus()
    queue = f"{bus.namespace}.short"
    await bus.transport.declare_queue(QueueSpec(queue))
    make_bus.extra_queues.add(queue)
    connection = _amqp_connection(bus)
    started = asyncio.get_running_loop().time()
    for _ in range(5):
        await bus.transport.queue_size(queue)
    took = (asyncio.get_running_loop().time() - started) / 5
    for step in range(60):
        task = asyncio.ensure_future(bus.transport.queue_size(queue))
        await asyncio.sleep(took * step / 40)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await asyncio.sleep(0.2)  # a connection-level close would have arrived by now
    assert _amqp_connection(bus) is connection
    assert not connection.is_closed  # type: ignore[attr-defined]
    assert await bus.transport.queue_size(queue) == 0
