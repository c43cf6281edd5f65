"""One behaviour suite, run on both transports (memory and a real RabbitMQ).

Each test runs twice through the ``transport`` fixture; the RabbitMQ run carries the
``broker`` marker. Nothing here reaches into a transport: the memory transport must behave
like RabbitMQ for everything choreo uses.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from choreo import Context, Event, Reject, Retry, Service
from choreo.transports.base import Message

from .conftest import Buses
from .helpers import Barrier, Recorder, drain_queue, ready_count


class SkuProcessed(Event):
    sku: str


class PriceChanged(Event, name="pricing.price_changed"):
    sku: str
    price: float


def recording_service(name: str, recorder: Recorder, event: type[Event] = SkuProcessed) -> Service:
    service = Service(name)

    @service.on(event)
    async def record(e: Event, ctx: Context) -> None:
        recorder.add((name, e, ctx))

    return service


class TestFanout:
    async def test_one_event_reaches_every_subscribed_service_once(self, make_bus: Buses) -> None:
        """Each service bound to an event gets every message exactly once."""
        seen, barrier = Recorder(), Barrier()
        names = ("inventory", "catalog", "wishlist")
        services = [barrier.join(recording_service(n, seen)) for n in names]
        bus = await make_bus()
        await bus.start(*services)
        for i in range(10):
            await bus.publish(SkuProcessed(sku=f"SKU-{i}"))
        await seen.wait_for(30)
        await barrier.cross(bus)  # a duplicate would have been handled before the sentinel
        pairs = sorted((name, e.sku) for name, e, _ in seen.items)
        expected = sorted(
            (n, f"SKU-{i}") for n in ("inventory", "catalog", "wishlist") for i in range(10)
        )
        assert pairs == expected

    async def test_service_gets_only_the_events_it_handles(self, make_bus: Buses) -> None:
        """A service bound to one event does not see another event's messages."""
        skus, prices, barrier = Recorder(), Recorder(), Barrier()
        bus = await make_bus()
        await bus.start(
            barrier.join(recording_service("catalog", skus)),
            barrier.join(recording_service("pricing", prices, PriceChanged)),
        )
        await bus.publish(SkuProcessed(sku="A1"))
        await bus.publish(PriceChanged(sku="A1", price=2.5))
        await skus.wait_for(1)
        await prices.wait_for(1)
        await barrier.cross(bus)  # a stray event would have been handled before the sentinel
        assert [type(e) for _, e, _ in skus.items] == [SkuProcessed]
        assert [type(e) for _, e, _ in prices.items] == [PriceChanged]

    async def test_one_service_handles_many_events(self, make_bus: Buses) -> None:
        """Handlers of one service are chosen by event type on the one queue."""
        seen = Recorder()
        service = Service("catalog")

        @service.on(SkuProcessed)
        async def on_sku(event: SkuProcessed) -> None:
            seen.add(("sku", event.sku))

        @service.on(PriceChanged)
        async def on_price(event: PriceChanged) -> None:
            seen.add(("price", event.price))

        bus = await make_bus()
        await bus.start(service)
        await bus.publish(SkuProcessed(sku="A1"))
        await bus.publish(PriceChanged(sku="A1", price=3.0))
        assert sorted(await seen.wait_for(2)) == [("price", 3.0), ("sku", "A1")]

    async def test_many_concurrent_publishes_are_all_confirmed_and_delivered(
        self, make_bus: Buses
    ) -> None:
        """asyncio.gather of 2,000 publishes: each returns its own id, all arrive."""
        seen = Recorder()
        bus = await make_bus()
        await bus.start(recording_service("catalog", seen))
        ids = await asyncio.gather(*(bus.publish(SkuProcessed(sku=str(i))) for i in range(2000)))
        assert len(set(ids)) == 2000
        await seen.wait_for(2000)
        assert {ctx.message_id for _, _, ctx in seen.items} == set(ids)


class TestDurability:
    async def test_events_wait_in_the_queue_while_the_service_is_down(
        self, make_bus: Buses
    ) -> None:
        """Published while no process consumes: delivered when the service starts."""
        first = Recorder()
        bus = await make_bus()
        await bus.start(recording_service("catalog", first))  # declares the queue
        await bus.stop()
        publisher = await make_bus()
        for i in range(5):
            await publisher.publish(SkuProcessed(sku=f"late-{i}"))
        assert first.items == []
        later = Recorder()
        worker = await make_bus()
        await worker.start(recording_service("catalog", later))
        skus = sorted(e.sku for _, e, _ in await later.wait_for(5))
        assert skus == [f"late-{i}" for i in range(5)]

    async def test_graceful_stop_finishes_handlers_in_flight_and_acks(
        self, make_bus: Buses
    ) -> None:
        """stop() waits for a running handler, which completes; its message is acked."""
        started, finished = asyncio.Event(), Recorder()
        service = Service("catalog")

        @service.on(SkuProcessed)
        async def slow(event: SkuProcessed) -> None:
            started.set()
            await asyncio.sleep(0.5)
            finished.add(event.sku)

        bus = await make_bus()
        await bus.start(service)
        await bus.publish(SkuProcessed(sku="A1"))
        await asyncio.wait_for(started.wait(), 10)
        await bus.stop(timeout=10)
        assert finished.items == ["A1"]
        assert (
            await ready_count(bus, "catalog" if not bus.namespace else f"{bus.namespace}.catalog")
            == 0
        )

    async def test_unfinished_message_is_redelivered_after_stop_timeout(
        self, make_bus: Buses
    ) -> None:
        """A handler still running when the stop timeout ends is cancelled; nothing is lost."""
        started = asyncio.Event()
        stuck = Service("catalog")

        @stuck.on(SkuProcessed)
        async def hang(event: SkuProcessed) -> None:
            started.set()
            await asyncio.sleep(3600)

        bus = await make_bus()
        await bus.start(stuck)
        await bus.publish(SkuProcessed(sku="A1"))
        await asyncio.wait_for(started.wait(), 10)
        await bus.stop(timeout=0.1)
        seen = Recorder()
        worker = await make_bus()
        await worker.start(recording_service("catalog", seen))
        assert [e.sku for _, e, _ in await seen.wait_for(1)] == ["A1"]

    async def test_concurrency_bounds_handlers_running_at_once(self, make_bus: Buses) -> None:
        """Service(concurrency=3): never more than 3 handlers run at the same time."""
        running, peak, done = 0, 0, Recorder()
        service = Service("catalog", concurrency=3, prefetch=20)

        @service.on(SkuProcessed)
        async def work(event: SkuProcessed) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1
            done.add(event.sku)

        bus = await make_bus()
        await bus.start(service)
        await asyncio.gather(*(bus.publish(SkuProcessed(sku=str(i))) for i in range(30)))
        await done.wait_for(30)
        assert peak == 3


class TestConversation:
    async def test_ctx_publish_chains_correlation_and_causation(self, make_bus: Buses) -> None:
        """A follow-up event keeps the correlation id and points at its cause."""
        seen = Recorder()
        catalog = Service("catalog")

        @catalog.on(SkuProcessed)
        async def reprice(event: SkuProcessed, ctx: Context) -> None:
            seen.add(("catalog", ctx.message_id, ctx.correlation_id, ctx.causation_id))
            await ctx.publish(PriceChanged(sku=event.sku, price=9.5))

        pricing = Service("pricing")

        @pricing.on(PriceChanged)
        async def priced(event: PriceChanged, ctx: Context) -> None:
            seen.add(("pricing", ctx.message_id, ctx.correlation_id, ctx.causation_id))

        bus = await make_bus()
        await bus.start(catalog, pricing)
        first = await bus.publish(SkuProcessed(sku="A1"))
        second = await bus.publish(SkuProcessed(sku="A2"), correlation_id="order-42")
        items = await seen.wait_for(4)
        by_cause = {cause: (svc, mid, corr) for svc, mid, corr, cause in items}
        # first hop without a correlation id: its own message id is the chain's id
        assert by_cause[None] in {("catalog", first, first), ("catalog", second, "order-42")}
        assert by_cause[first][0] == "pricing"
        assert by_cause[first][2] == first
        assert by_cause[second][0] == "pricing"
        assert by_cause[second][2] == "order-42"

    async def test_context_tells_service_event_attempt_and_headers(self, make_bus: Buses) -> None:
        """The context carries the service name, event name, attempt and headers."""
        seen = Recorder()
        bus = await make_bus()
        await bus.start(recording_service("catalog", seen))
        await bus.publish(SkuProcessed(sku="A1"), headers={"tenant": "acme"})
        ((_, _, ctx),) = await seen.wait_for(1)
        assert (ctx.service, ctx.event_name, ctx.attempt) == ("catalog", "sku_processed", 1)
        assert ctx.headers["tenant"] == "acme"


class TestForeignPublishers:
    async def test_plain_json_without_type_is_dispatched_by_exchange(self, make_bus: Buses) -> None:
        """A publisher that sets no properties at all still reaches the right handler."""
        seen = Recorder()
        bus = await make_bus()
        await bus.start(recording_service("catalog", seen))
        exchange = f"{bus.namespace}.sku_processed"
        await bus.transport.publish(Message(body=b'{"sku": "FOREIGN-1"}'), exchange)
        ((_, event, ctx),) = await seen.wait_for(1)
        assert event == SkuProcessed(sku="FOREIGN-1")
        assert ctx.event_name == "sku_processed"


class TestDeadLetters:
    async def _dead_letters(
        self, make_bus: Buses, bodies: list[Message], expect: int
    ) -> list[Message]:
        seen = Recorder()
        bus = await make_bus()
        await bus.start(recording_service("catalog", seen))
        exchange = f"{bus.namespace}.sku_processed"
        for message in bodies:
            await bus.transport.publish(message, exchange)
        await bus.publish(SkuProcessed(sku="still-consuming"))
        await seen.wait_for(1)
        dead = await drain_queue(bus, f"{bus.namespace}.catalog.dlq", expect)
        return [d.message for d in dead]

    async def test_poison_input_is_dead_lettered_with_its_reason(self, make_bus: Buses) -> None:
        """Bad JSON, invalid payload, unknown type, wrong content type: DLQ, worker goes on."""
        poison = [
            Message(body=b"{not json", message_id="bad-json"),
            Message(body=b'{"sku": 5}', message_id="invalid", type="sku_processed"),
            Message(body=b'{"sku": "A"}', message_id="unknown", type="no_such_event"),
            Message(body=b"<sku/>", message_id="xml", content_type="application/xml"),
        ]
        dead = await self._dead_letters(make_bus, poison, 4)
        reasons = {m.message_id: m.headers["x-choreo-error-type"] for m in dead}
        assert reasons == {
            "bad-json": "InvalidJSON",
            "invalid": "ValidationError",
            "unknown": "UnknownEvent",
            "xml": "UnsupportedContentType",
        }
        for message in dead:
            assert message.headers["x-choreo-service"] == "catalog"
            assert message.headers["x-choreo-attempts"] == 0
            # an unknown type through an exchange catalog handles is mislabelled: no hand-back
            assert "x-choreo-handed-back" not in message.headers
            assert message.headers["x-choreo-error-message"]
            assert message.headers["x-choreo-failed-at"]
        assert {m.body for m in dead} == {m.body for m in poison}  # bodies kept as they were

    async def test_failing_handler_is_retried_then_dead_lettered(self, make_bus: Buses) -> None:
        """attempts=3: the handler runs three times, then the message goes to the DLQ."""
        attempts = Recorder()
        service = Service("catalog")

        @service.on(SkuProcessed, retry=Retry(attempts=3, delay=0.01))
        async def broken(event: SkuProcessed, ctx: Context) -> None:
            attempts.add(ctx.attempt)
            raise RuntimeError(f"database down for {event.sku}")

        bus = await make_bus()
        await bus.start(service)
        message_id = await bus.publish(SkuProcessed(sku="A1"), headers={"tenant": "acme"})
        (dead,) = await drain_queue(bus, f"{bus.namespace}.catalog.dlq", 1)
        assert attempts.items == [1, 2, 3]
        headers = dead.message.headers
        assert headers["x-choreo-error-type"] == "RuntimeError"
        assert headers["x-choreo-error-message"] == "database down for A1"
        assert headers["x-choreo-attempts"] == 3
        assert headers["x-choreo-event"] == "sku_processed"
        assert "Traceback" in headers["x-choreo-traceback"]
        assert headers["tenant"] == "acme"
        assert dead.message.message_id == message_id
        assert dead.message.type == "sku_processed"
        assert json.loads(dead.message.body) == {"sku": "A1"}

    async def test_transient_failure_recovers_within_its_attempts(self, make_bus: Buses) -> None:
        """A handler that fails once and then succeeds is acked; nothing is dead-lettered."""
        calls = Recorder()
        service = Service("catalog")

        @service.on(SkuProcessed, retry=Retry(attempts=3, delay=0.01))
        async def flaky(event: SkuProcessed, ctx: Context) -> None:
            calls.add(ctx.attempt)
            if ctx.attempt == 1:
                raise ConnectionError("blip")

        bus = await make_bus()
        await bus.start(service)
        await bus.publish(SkuProcessed(sku="A1"))
        await calls.wait_for(2)
        await bus.stop()
        assert calls.items == [1, 2]
        assert await ready_count(bus, f"{bus.namespace}.catalog.dlq") == 0
        assert await ready_count(bus, f"{bus.namespace}.catalog") == 0

    async def test_reject_and_give_up_on_dead_letter_at_once(self, make_bus: Buses) -> None:
        """Reject("reason") and an exception in give_up_on skip the remaining attempts."""
        calls = Recorder()
        service = Service("catalog", retry=Retry(attempts=5, delay=0.01, give_up_on=(ValueError,)))

        @service.on(SkuProcessed)
        async def judge(event: SkuProcessed) -> None:
            calls.add(event.sku)
            if event.sku == "reject":
                raise Reject("discontinued SKU")
            raise ValueError("malformed SKU")

        bus = await make_bus()
        await bus.start(service)
        await bus.publish(SkuProcessed(sku="reject"))
        await bus.publish(SkuProcessed(sku="value"))
        dead = await drain_queue(bus, f"{bus.namespace}.catalog.dlq", 2)
        by_type = {d.message.headers["x-choreo-error-type"]: d.message.headers for d in dead}
        assert by_type["Reject"]["x-choreo-error-message"] == "discontinued SKU"
        assert by_type["ValueError"]["x-choreo-attempts"] == 1
        assert sorted(calls.items) == ["reject", "value"]

    async def test_failure_during_shutdown_goes_back_to_the_queue(self, make_bus: Buses) -> None:
        """Stopping with attempts left: the message is requeued, not dead-lettered."""
        attempts = Recorder()
        service = Service("catalog")

        @service.on(SkuProcessed, retry=Retry(attempts=3, delay=0.3))
        async def broken(event: SkuProcessed, ctx: Context) -> None:
            attempts.add(ctx.attempt)
            raise RuntimeError("dependency is shutting down")

        bus = await make_bus()
        await bus.start(service)
        await bus.publish(SkuProcessed(sku="A1"))
        await attempts.wait_for(1)
        await bus.stop(timeout=10)
        assert len(attempts.items) < 3
        assert await ready_count(bus, f"{bus.namespace}.catalog.dlq") == 0
        assert await ready_count(bus, f"{bus.namespace}.catalog") == 1

    async def test_one_failing_service_does_not_disturb_the_others(self, make_bus: Buses) -> None:
        """catalog fails and dead-letters; wishlist still gets every event exactly once."""
        wishlist_seen, barrier = Recorder(), Barrier()
        catalog = Service("catalog", retry=Retry(attempts=2, delay=0.01))

        @catalog.on(SkuProcessed)
        async def broken(event: SkuProcessed) -> None:
            raise RuntimeError("no")

        bus = await make_bus()
        await bus.start(catalog, barrier.join(recording_service("wishlist", wishlist_seen)))
        for i in range(5):
            await bus.publish(SkuProcessed(sku=str(i)))
        await drain_queue(bus, f"{bus.namespace}.catalog.dlq", 5)
        await wishlist_seen.wait_for(5)
        await barrier.cross(bus)  # a duplicate would have been handled before the sentinel
        assert sorted(e.sku for _, e, _ in wishlist_seen.items) == [str(i) for i in range(5)]


@pytest.mark.parametrize("transport", ["memory"], indirect=True)
async def test_memory_drops_messages_to_an_exchange_with_no_queue(make_bus: Buses) -> None:
    """Like RabbitMQ, a fanout exchange with no bound queue drops what it receives."""
    bus = await make_bus()
    await bus.publish(SkuProcessed(sku="nobody"))
    seen, barrier = Recorder(), Barrier()
    await bus.start(barrier.join(recording_service("catalog", seen)))
    await barrier.cross(bus)  # a kept message would have been handled before the sentinel
    assert seen.items == []
