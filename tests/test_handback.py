"""Events a process has no handler for, although its queue is bound for them: a rolling
upgrade that adds a handler, or two different services under one name. They are handed
back for a process that has one, a bounded number of times, then dead-lettered. Both
transports."""

from __future__ import annotations

import logging

import pytest

from choreo import Context, Event, Service
from choreo.observability.observer import Observer, Outcome

from .conftest import Buses
from .helpers import Recorder, drain_queue, idle, ready_count


class ItemAdded(Event):
    sku: str


class ItemRemoved(Event):
    sku: str


class Outcomes(Observer):
    """Records (event, outcome) of every delivery a bus settled."""

    def __init__(self) -> None:
        self.seen = Recorder()

    def handled(self, service: str, event: str | None, outcome: Outcome, *rest: object) -> None:
        self.seen.add((event, outcome))

    def count(self, outcome: Outcome) -> int:
        return sum(1 for _, seen in self.seen.items if seen is outcome)


def catalog(seen: Recorder, *, removals: bool, delivery_limit: int | None = None) -> Service:
    """Version 1 of catalog handles ItemAdded; version 2 (``removals``) ItemRemoved too."""
    service = Service("catalog", delivery_limit=delivery_limit)

    @service.on(ItemAdded)
    async def added(event: ItemAdded) -> None:
        seen.add(("added", event.sku))

    if removals:

        @service.on(ItemRemoved)
        async def removed(event: ItemRemoved, ctx: Context) -> None:
            seen.add(("removed", event.sku, ctx.headers.get("x-choreo-handed-back", 0)))

    return service


async def test_a_rolling_upgrade_that_adds_a_handler_loses_no_event(make_bus: Buses) -> None:
    """v2's topology is applied (its queue is bound for ItemRemoved) while only v1 runs: v1
    hands the removals back, again and again, until v2 starts and handles each one once."""
    old_outcomes, old_seen, new_seen = Outcomes(), Recorder(), Recorder()
    old_bus = await make_bus(observer=old_outcomes)
    new_bus = await make_bus()
    await new_bus.declare(catalog(new_seen, removals=True))  # the deploy step of v2
    await old_bus.start(catalog(old_seen, removals=False))
    for n in range(5):
        await old_bus.publish(ItemRemoved(sku=f"S{n}"))
    # each is handed back at once, then after 1 s: wait until one came back from its delay
    await old_outcomes.seen.wait_until(lambda _: old_outcomes.count(Outcome.HANDED_BACK) > 5)
    await new_bus.start(catalog(new_seen, removals=True))
    await old_bus.stop()
    await new_seen.wait_for(5)
    await idle(new_bus)
    assert sorted(item[1] for item in new_seen.items) == [f"S{n}" for n in range(5)]
    assert all(item[2] >= 1 for item in new_seen.items)  # each came through a hand-back
    assert old_seen.items == []
    assert {outcome for _, outcome in old_outcomes.seen.items} == {Outcome.HANDED_BACK}
    await new_bus.stop()
    assert await ready_count(new_bus, f"{new_bus.namespace}.catalog.dlq") == 0
    assert await ready_count(new_bus, f"{new_bus.namespace}.catalog") == 0


async def test_an_event_no_process_handles_is_dead_lettered_after_a_few_deliveries(
    make_bus: Buses, caplog: pytest.LogCaptureFixture
) -> None:
    """A stale binding (or another service under the same name that is gone): after
    ``delivery_limit`` deliveries the event is dead-lettered as UnknownEvent, saying so;
    the warning is logged once per event, naming the service and the event."""
    seen = Recorder()
    bus = await make_bus()
    await bus.declare(catalog(Recorder(), removals=True))
    await bus.start(catalog(seen, removals=False, delivery_limit=3))
    with caplog.at_level(logging.WARNING, logger="choreo.dispatch"):
        ids = {await bus.publish(ItemRemoved(sku=f"S{n}")) for n in range(2)}
        dead = await drain_queue(bus, f"{bus.namespace}.catalog.dlq", 2)
    assert {d.message.message_id for d in dead} == ids
    for letter in dead:
        headers = letter.message.headers
        assert headers["x-choreo-error-type"] == "UnknownEvent"
        assert "no handler for event type 'item_removed'" in headers["x-choreo-error-message"]
        assert "delivered 3 times" in headers["x-choreo-error-message"]
        assert headers["x-choreo-handed-back"] == 2
        assert headers["x-choreo-attempts"] == 0
    warnings = [r.getMessage() for r in caplog.records if "handed back" in r.getMessage()]
    assert len(warnings) == 1
    assert "catalog: no handler for event type 'item_removed'" in warnings[0]
    assert "choreo topology --prune" in warnings[0]
    await bus.publish(ItemAdded(sku="A1"))  # the worker went on all along
    assert await seen.wait_for(1) == [("added", "A1")]
