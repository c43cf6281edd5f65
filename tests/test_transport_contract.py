"""The transport contract, on both transports: every broker error reaches the caller as
a ``ChoreoError`` subclass (never an aio-pika/aiormq/pamqp exception), and the in-memory
broker refuses what RabbitMQ refuses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from choreo import ConfigurationError, ConnectionFailed, PublishError
from choreo.transports.base import DIRECT, FANOUT, Delivery, Message, QueueSpec, Transport

from .conftest import Buses


async def _transport(make_bus: Buses) -> tuple[Transport, str]:
    bus = await make_bus()
    return bus.transport, bus.namespace


async def _ignore(delivery: Delivery) -> None:
    """A consumer callback for subscriptions that must fail before any delivery."""


def _message() -> Message:
    return Message(body=b"{}", message_id="m-1", type="ping", content_type="application/json")


async def _fetch(transport: Transport, queue: str) -> None:
    async with transport.fetch(queue, 1):
        pass


async def _consume(transport: Transport, queue: str) -> None:
    await transport.consume(queue, _ignore, prefetch=1)


Operation = Callable[[Transport, str], Awaitable[object]]
ON_A_QUEUE: dict[str, Operation] = {
    "queue_size": lambda t, q: t.queue_size(q),
    "consumer_count": lambda t, q: t.consumer_count(q),
    "fetch": _fetch,
    "purge": lambda t, q: t.purge(q),
    "consume": _consume,
}
ANY: dict[str, Operation] = {
    **ON_A_QUEUE,
    "declare_exchange": lambda t, q: t.declare_exchange(q, FANOUT),
    "exchange_exists": lambda t, q: t.exchange_exists(q),
    "declare_queue": lambda t, q: t.declare_queue(QueueSpec(q)),
    "publish": lambda t, q: t.publish(_message(), "", q),
}


class TestDeclaring:
    async def test_exchange_of_another_kind_is_a_configuration_error(self, make_bus: Buses) -> None:
        """Declaring an existing exchange as another kind: ConfigurationError."""
        transport, ns = await _transport(make_bus)
        name = f"{ns}.kind"
        make_bus.extra_exchanges.add(name)
        await transport.declare_exchange(name, FANOUT)
        with pytest.raises(ConfigurationError, match="exists with other settings"):
            await transport.declare_exchange(name, DIRECT)
        await transport.declare_exchange(name, FANOUT)  # the transport still works

    async def test_queue_with_other_arguments_is_a_configuration_error(
        self, make_bus: Buses
    ) -> None:
        """Declaring an existing queue with other arguments: ConfigurationError, as on
        RabbitMQ (PRECONDITION_FAILED)."""
        transport, ns = await _transport(make_bus)
        name = f"{ns}.args"
        make_bus.extra_queues.add(name)
        await transport.declare_queue(QueueSpec(name, arguments=(("x-message-ttl", 1000),)))
        await transport.declare_queue(QueueSpec(name, arguments=(("x-message-ttl", 1000),)))
        with pytest.raises(ConfigurationError, match="exists with other settings"):
            await transport.declare_queue(QueueSpec(name, arguments=(("x-message-ttl", 2000),)))
        with pytest.raises(ConfigurationError, match="exists with other settings"):
            await transport.declare_queue(QueueSpec(name))
        assert await transport.queue_size(name) == 0  # the transport still works

    async def test_binding_to_a_missing_exchange_is_a_configuration_error(
        self, make_bus: Buses
    ) -> None:
        """A queue bound to an exchange that does not exist: ConfigurationError."""
        transport, ns = await _transport(make_bus)
        name = f"{ns}.orphan"
        make_bus.extra_queues.add(name)
        with pytest.raises(ConfigurationError, match="no exchange"):
            await transport.declare_queue(QueueSpec(name, bindings=((f"{ns}.nowhere", ""),)))


class TestExchangeExists:
    async def test_exists_only_once_declared_and_asking_declares_nothing(
        self, make_bus: Buses
    ) -> None:
        """False for a missing exchange (and it stays missing: asking is a passive
        declare), True once declared, of either kind; the default exchange exists."""
        transport, ns = await _transport(make_bus)
        fanout, direct = f"{ns}.asked", f"{ns}.asked-direct"
        assert not await transport.exchange_exists(fanout)
        assert not await transport.exchange_exists(fanout)  # the first ask created nothing
        with pytest.raises(PublishError, match="no exchange"):
            await transport.publish(_message(), fanout)
        make_bus.extra_exchanges |= {fanout, direct}
        await transport.declare_exchange(fanout, FANOUT)
        await transport.declare_exchange(direct, DIRECT)
        assert await transport.exchange_exists(fanout)
        assert await transport.exchange_exists(direct)
        assert await transport.exchange_exists("")


class TestMissingQueue:
    @pytest.mark.parametrize("operation", sorted(ON_A_QUEUE))
    async def test_a_missing_queue_is_a_configuration_error(
        self, make_bus: Buses, operation: str
    ) -> None:
        """queue_size, fetch, purge and consume of a queue that does not exist."""
        transport, ns = await _transport(make_bus)
        missing = f"{ns}.missing"
        with pytest.raises(ConfigurationError, match=r"no queue|no such queue"):
            await ON_A_QUEUE[operation](transport, missing)
        name = f"{ns}.present"  # the transport still works
        make_bus.extra_queues.add(name)
        await transport.declare_queue(QueueSpec(name))
        assert await transport.queue_size(name) == 0

    async def test_publishing_to_a_missing_exchange_is_a_publish_error(
        self, make_bus: Buses
    ) -> None:
        """A publish to an exchange that does not exist fails at once with PublishError."""
        transport, ns = await _transport(make_bus)
        with pytest.raises(PublishError, match="no exchange"):
            await transport.publish(_message(), f"{ns}.nowhere", mandatory=True)
        name = f"{ns}.after"  # the transport still publishes
        make_bus.extra_queues.add(name)
        await transport.declare_queue(QueueSpec(name))
        await transport.publish(_message(), "", name, mandatory=True)
        assert await transport.queue_size(name) == 1


class TestConsumerCount:
    async def test_counts_every_subscription_standbys_included(self, make_bus: Buses) -> None:
        """A single-active-consumer queue: the active one and its standby both count;
        a closed subscription no longer does."""
        transport, ns = await _transport(make_bus)
        name = f"{ns}.counted"
        make_bus.extra_queues.add(name)
        single = (("x-single-active-consumer", True),)
        await transport.declare_queue(QueueSpec(name, arguments=single))
        assert await transport.consumer_count(name) == 0
        first = await transport.consume(name, _ignore, prefetch=1)
        second = await transport.consume(name, _ignore, prefetch=1)
        assert await transport.consumer_count(name) == 2
        await first.close()
        assert await transport.consumer_count(name) == 1
        await second.close()
        assert await transport.consumer_count(name) == 0


class TestClosed:
    async def test_connected_is_false_after_close(self, make_bus: Buses) -> None:
        """``connected`` says True while open, False once closed."""
        transport, _ = await _transport(make_bus)
        assert transport.connected
        await transport.close()
        assert not transport.connected

    @pytest.mark.parametrize("operation", sorted(ANY))
    async def test_a_closed_transport_raises_connection_failed(
        self, make_bus: Buses, operation: str
    ) -> None:
        """Every operation of a closed transport: ConnectionFailed."""
        transport, ns = await _transport(make_bus)
        await transport.close()
        with pytest.raises(ConnectionFailed):
            await ANY[operation](transport, f"{ns}.q")
