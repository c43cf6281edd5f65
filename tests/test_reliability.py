"""Retries through the broker, size limits, unroutable events and the DLQ tools, on both
transports (the memory transport simulates TTL retry queues and dead-lettering)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from choreo import Bus, Context, Event, Retry, Service, Unroutable
from choreo import dlq as dlq_tools
from choreo.transports.base import Message

from .conftest import Buses
from .helpers import Barrier, Recorder, drain_queue, ready_count


class SkuProcessed(Event):
    sku: str


def failing_service(calls: Recorder, retry: Retry, fail_until: int = 10**6) -> Service:
    service = Service("catalog")

    @service.on(SkuProcessed, retry=retry)
    async def handle(event: SkuProcessed, ctx: Context) -> None:
        calls.add((event.sku, ctx.attempt))
        if ctx.attempt < fail_until and event.sku != "good":
            raise RuntimeError(f"attempt {ctx.attempt} failed")

    return service


class TestBrokerRetries:
    async def test_long_waits_go_through_the_service_retry_queue(self, make_bus: Buses) -> None:
        """Waits over in_process_max_delay park the message in <queue>.retry.<ms>; attempts
        count on, and the last failure dead-letters with the right count."""
        calls = Recorder()
        policy = Retry(attempts=3, delay=0.2, multiplier=1.5, in_process_max_delay=0.1)
        bus = await make_bus()
        await bus.start(failing_service(calls, policy))
        message_id = await bus.publish(SkuProcessed(sku="A1"))
        (dead,) = await drain_queue(bus, f"{bus.namespace}.catalog.dlq", 1)
        assert calls.items == [("A1", 1), ("A1", 2), ("A1", 3)]
        assert dead.message.message_id == message_id
        assert dead.message.headers["x-choreo-attempts"] == 3
        assert {f"{bus.namespace}.catalog.retry.200", f"{bus.namespace}.catalog.retry.300"} <= (
            bus.declared_queues
        )

    async def test_retry_through_the_broker_can_succeed(self, make_bus: Buses) -> None:
        """A handler that succeeds on attempt 2 (after a broker wait) acks; no dead letter."""
        calls, barrier = Recorder(), Barrier()
        policy = Retry(attempts=3, delay=0.2, in_process_max_delay=0)
        bus = await make_bus()
        await bus.start(barrier.join(failing_service(calls, policy, fail_until=2)))
        await bus.publish(SkuProcessed(sku="A1"))
        await calls.wait_for(2)
        await barrier.cross(bus)  # a redelivered A1 would have been handled before the sentinel
        await bus.stop()
        assert calls.items == [("A1", 1), ("A1", 2)]
        assert await ready_count(bus, f"{bus.namespace}.catalog.dlq") == 0
        assert await ready_count(bus, f"{bus.namespace}.catalog") == 0

    async def test_a_waiting_retry_does_not_block_the_queue(self, make_bus: Buses) -> None:
        """concurrency=1: while one message waits 2 s for its retry, the others are handled."""
        calls = Recorder()
        service = Service("catalog", concurrency=1)
        policy = Retry(attempts=2, delay=2.0, in_process_max_delay=0.5)

        @service.on(SkuProcessed, retry=policy)
        async def handle(event: SkuProcessed, ctx: Context) -> None:
            calls.add((event.sku, ctx.attempt))
            if event.sku == "bad":
                raise RuntimeError("not yet")

        bus = await make_bus()
        await bus.start(service)
        await bus.publish(SkuProcessed(sku="bad"))
        for i in range(5):
            await bus.publish(SkuProcessed(sku=f"good-{i}"))
        await calls.wait_for(7)
        order = [item for item in calls.items]
        assert order[0] == ("bad", 1)
        assert order[-1] == ("bad", 2)  # the retry came back after every other message
        assert {sku for sku, _ in order[1:-1]} == {f"good-{i}" for i in range(5)}

    async def test_foreign_message_without_type_survives_a_broker_retry(
        self, make_bus: Buses
    ) -> None:
        """A type-less message is dispatched again after its retry queue hands it back."""
        calls = Recorder()
        policy = Retry(attempts=2, delay=0.2, in_process_max_delay=0)
        bus = await make_bus()
        await bus.start(failing_service(calls, policy, fail_until=2))
        await bus.transport.publish(
            Message(body=b'{"sku": "F1"}'), f"{bus.namespace}.sku_processed"
        )
        assert await calls.wait_for(2) == [("F1", 1), ("F1", 2)]


class TestLimitsAndRouting:
    async def test_body_over_the_size_limit_is_dead_lettered(self, make_bus: Buses) -> None:
        """max_message_size: a larger body goes to the DLQ as MessageTooLarge."""
        calls = Recorder()
        bus = await make_bus(max_message_size=64)
        await bus.start(failing_service(calls, Retry(attempts=1)))
        await bus.publish(SkuProcessed(sku="x" * 100))
        (dead,) = await drain_queue(bus, f"{bus.namespace}.catalog.dlq", 1)
        assert dead.message.headers["x-choreo-error-type"] == "MessageTooLarge"
        assert calls.items == []

    async def test_unroutable_event_is_logged_by_default(
        self, make_bus: Buses, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Publishing an event no queue is bound to names the event in a warning."""
        bus = await make_bus()
        with caplog.at_level(logging.WARNING, logger="choreo"):
            await bus.publish(SkuProcessed(sku="A1"))
        assert "'sku_processed'" in caplog.text
        assert "no queue is bound" in caplog.text

    async def test_unroutable_event_can_raise(self, make_bus: Buses) -> None:
        """on_unroutable='raise' makes the missing topology an error."""
        bus = await make_bus(on_unroutable="raise")
        with pytest.raises(Unroutable, match="nobody consumes 'sku_processed'"):
            await bus.publish(SkuProcessed(sku="A1"))


class TestNothingLost:
    async def test_message_is_kept_when_its_dlq_is_gone(self, make_bus: Buses) -> None:
        """A dead letter that no queue takes (the DLQ was deleted) is not dropped: the
        message goes back to the service queue."""
        calls = Recorder()
        bus = await make_bus()
        await bus.start(failing_service(calls, Retry(attempts=1)))
        await bus.transport.delete_queue(f"{bus.namespace}.catalog.dlq")
        await bus.publish(SkuProcessed(sku="A1"))
        await calls.wait_for(1)
        await bus.stop()
        assert await ready_count(bus, f"{bus.namespace}.catalog") == 1


class TestDeadLetterTools:
    broken = True

    async def _two_dead_letters(self, make_bus: Buses) -> tuple[Bus, list[str], Recorder]:
        """Two messages dead-lettered by a handler that works again once ``broken`` is off."""
        calls = Recorder()
        bus = await make_bus()
        service = Service("catalog", retry=Retry(attempts=1))

        @service.on(SkuProcessed)
        async def handle(event: SkuProcessed, ctx: Context) -> None:
            calls.add((event.sku, ctx.attempt))
            if self.broken:
                raise RuntimeError(f"attempt {ctx.attempt} failed")

        await bus.start(service)
        ids = [await bus.publish(SkuProcessed(sku=f"A{i}")) for i in range(2)]
        async with asyncio.timeout(20):
            while await bus.transport.queue_size(f"{bus.namespace}.catalog.dlq") < 2:
                await asyncio.sleep(0.02)
        return bus, ids, calls

    async def test_list_shows_without_consuming(self, make_bus: Buses) -> None:
        """list_dead_letters reports event, error and attempts; the messages stay."""
        bus, ids, _ = await self._two_dead_letters(make_bus)
        letters = await dlq_tools.list_dead_letters(bus, "catalog")
        assert [letter.message_id for letter in letters] == ids
        assert letters[0].event == "sku_processed"
        assert letters[0].error_type == "RuntimeError"
        assert letters[0].attempts == 1
        assert '"sku":"A0"' in letters[0].preview.replace(" ", "")
        assert await dlq_tools.list_dead_letters(bus, "catalog") == letters

    async def test_replay_one_moves_it_back_with_attempts_reset(self, make_bus: Buses) -> None:
        """Replay --id: that message returns to the service queue only, attempt 1 again."""
        bus, ids, calls = await self._two_dead_letters(make_bus)
        self.broken = False
        moved = await dlq_tools.replay(bus, "catalog", ids[1])
        assert moved == 1
        await calls.wait_for(3)
        assert calls.items[-1] == ("A1", 1)
        remaining = await dlq_tools.list_dead_letters(bus, "catalog")
        assert [letter.message_id for letter in remaining] == [ids[0]]

    async def test_replay_all_and_purge(self, make_bus: Buses) -> None:
        """Replay every dead letter; purge empties the DLQ and says how many it dropped."""
        bus, _, calls = await self._two_dead_letters(make_bus)
        assert await dlq_tools.replay(bus, "catalog") == 2  # still broken: back to the DLQ
        await calls.wait_for(4)
        assert calls.items[2:] == [("A0", 1), ("A1", 1)]
        async with asyncio.timeout(20):
            while await bus.transport.queue_size(f"{bus.namespace}.catalog.dlq") < 2:
                await asyncio.sleep(0.02)
        assert await dlq_tools.purge(bus, "catalog") == 2
        assert await dlq_tools.list_dead_letters(bus, "catalog") == []
