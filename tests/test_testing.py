"""choreo.testing: the harness users run their own services in, tried on the demo."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from choreo import Context, Event, Reject, Retry, Service
from choreo.testing import NotSettled, harness
from choreo.transports import memory
from services import catalog, inventory, warehouse, wishlist
from services.events import Availability, GetAvailability, SkuProcessed, SkuReceived

DEMO = (warehouse.service, inventory.service, catalog.service, wishlist.service)


@pytest.fixture
async def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Path]:
    """A fresh CHOREO_DEMO_DATA: each demo service gets a new store on a SQLite file there."""
    monkeypatch.setenv("CHOREO_DEMO_DATA", str(tmp_path))
    monkeypatch.delenv("CHOREO_DEMO_DB", raising=False)
    modules = (inventory, catalog, wishlist)
    for module in modules:
        store = module.open_store()
        monkeypatch.setattr(module, "store", store)  # the responder's
        monkeypatch.setattr(module.service, "store", store)  # the handlers'
    yield tmp_path
    for module in modules:
        await module.store.engine.dispose()


def query(data: Path, service: str, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(data / f"{service}.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


class Ping(Event):
    n: int


class TestOnTheDemo:
    async def test_one_report_goes_through_the_whole_choreography(self, data: Path) -> None:
        """sku_received -> inventory publishes sku_processed -> catalog and wishlist ask
        inventory; after settle() every database shows the outcome."""
        async with harness(*DEMO) as h:
            await h.publish(SkuReceived(sku="SKU-2", quantity=5, warehouse="north"))
            await h.settle()
            assert h.published_by(None) == [SkuReceived(sku="SKU-2", quantity=5, warehouse="north")]
            assert h.published_by("inventory") == [SkuProcessed(sku="SKU-2")]
            assert [(p.source, p.name) for p in h.published] == [
                (None, "sku_received"),
                ("inventory", "sku_processed"),
            ]
            assert await h.dead_letters("catalog") == []
        products = query(data, "catalog", "SELECT sku, available FROM products WHERE sku='SKU-2'")
        assert products == [("SKU-2", 1)]
        mails = query(data, "wishlist", "SELECT user FROM notifications ORDER BY user")
        assert mails == [("alice",), ("bob",)]

    async def test_follow_ups_share_the_correlation_id(self, data: Path) -> None:
        """What inventory publishes carries the id of the report that caused it."""
        async with harness(*DEMO) as h:
            first = await h.publish(SkuReceived(sku="SKU-1", quantity=1, warehouse="w"))
            await h.settle()
            (follow_up,) = [p for p in h.published if p.source == "inventory"]
            assert follow_up.correlation_id == first

    async def test_requests_are_answered_by_the_services(self, data: Path) -> None:
        """h.request asks the responders started in the harness."""
        async with harness(inventory.service) as h:
            reply = await h.request(GetAvailability(sku="SKU-9"), Availability)
        assert reply == Availability(sku="SKU-9", available=0, version=0)

    async def test_events_of_a_type(self, data: Path) -> None:
        """h.events(Type) picks the published events of one class, whoever sent them."""
        async with harness(*DEMO) as h:
            for sku in ("SKU-1", "SKU-4"):
                await h.publish(SkuReceived(sku=sku, quantity=2, warehouse="w"))
            await h.settle()
            assert sorted(e.sku for e in h.events(SkuProcessed)) == ["SKU-1", "SKU-4"]


class TestSettle:
    async def test_a_handler_that_never_returns_is_named_when_settle_times_out(self) -> None:
        """NotSettled says what is still busy: a handler in flight."""
        release = asyncio.Event()
        stuck = Service("stuck")

        @stuck.on(Ping)
        async def wait(event: Ping) -> None:
            await release.wait()

        async with harness(stuck) as h:
            await h.publish(Ping(n=1))
            with pytest.raises(NotSettled, match=r"after 0\.2s: 1 handler\(s\) in flight"):
                await h.settle(timeout=0.2)
            release.set()
            await h.settle()
            assert h.busy() == []

    async def test_settle_waits_for_retries_through_the_broker(self) -> None:
        """A retry waiting in the service's retry queue is not settled yet."""
        calls: list[int] = []
        flaky = Service("flaky", retry=Retry(attempts=2, delay=0.3, in_process_max_delay=0.05))

        @flaky.on(Ping)
        async def fail_once(event: Ping) -> None:
            calls.append(event.n)
            if len(calls) == 1:
                raise RuntimeError("first attempt fails")

        async with harness(flaky) as h:
            await h.publish(Ping(n=1))
            await h.settle()
            assert calls == [1, 1]
            assert await h.dead_letters("flaky") == []

    async def test_dead_letters_do_not_keep_settle_waiting(self) -> None:
        """A rejected message sits in the DLQ; settle() returns and dead_letters() shows it."""
        picky = Service("picky")

        @picky.on(Ping)
        async def refuse(event: Ping) -> None:
            raise Reject(f"no pings, not even {event.n}")

        async with harness(picky) as h:
            await h.publish(Ping(n=3))
            await h.settle()
            (letter,) = await h.dead_letters("picky")
            assert (letter.event, letter.error_type) == ("ping", "Reject")
            assert letter.error_message == "no pings, not even 3"

    async def test_settle_names_a_queue_still_holding_messages(self) -> None:
        """Messages waiting in a long broker retry: the queue is named in the error."""
        slow = Service("slow", retry=Retry(attempts=2, delay=30.0, in_process_max_delay=0.01))

        @slow.on(Ping)
        async def fail(event: Ping) -> None:
            raise RuntimeError("always")

        async with harness(slow) as h:
            await h.publish(Ping(n=1))
            with pytest.raises(NotSettled, match=r"queue 'slow\.retry\.30000' holds 1 ready"):
                await h.settle(timeout=0.3)


class TestIsolation:
    async def test_each_harness_has_its_own_broker_forgotten_at_the_end(self) -> None:
        """Two harnesses at once never see each other's events; the broker goes away."""
        seen: dict[str, list[int]] = {"one": [], "two": []}

        def recorder(key: str) -> Service:
            service = Service("recorder")

            @service.on(Ping)
            async def record(event: Ping, ctx: Context) -> None:
                seen[key].append(event.n)

            return service

        async with harness(recorder("one")) as one, harness(recorder("two")) as two:
            await one.publish(Ping(n=1))
            await two.publish(Ping(n=2))
            await one.settle()
            await two.settle()
            name = one.bus.url.removeprefix("memory://")
            assert memory.exists(name)
        assert seen == {"one": [1], "two": [2]}
        assert not memory.exists(name)

    async def test_a_service_that_only_emits_is_accepted_and_not_started(self) -> None:
        """The warehouse feed handles nothing: the harness takes it and runs the others."""
        async with harness(warehouse.service) as h:
            assert h.bus.running == ()
            await h.publish(SkuReceived(sku="SKU-1", quantity=1, warehouse="w"))
            await h.settle()
            assert h.published_by(None) == [SkuReceived(sku="SKU-1", quantity=1, warehouse="w")]
