"""Request-response, on both transports: @service.responds, bus.request, ctx.request."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from choreo import (
    ConfigurationError,
    ConnectionFailed,
    Context,
    Event,
    InvalidReply,
    NoResponder,
    RemoteError,
    RequestTimeout,
    Service,
)

from .conftest import Buses
from .fixtures.responder import Answer, Ask
from .helpers import WAIT, Recorder

ROOT = Path(__file__).resolve().parent.parent


class GetAvailability(Event):
    sku: str
    delay: float = 0.0


class Availability(Event):
    sku: str
    available: int


class SkuProcessed(Event):
    sku: str


def inventory_service(seen: Recorder | None = None, instance: str = "one") -> Service:
    service = Service("inventory")

    @service.responds(GetAvailability)
    async def availability(query: GetAvailability, ctx: Context) -> Availability:
        if seen is not None:
            seen.add((instance, ctx))
        await asyncio.sleep(query.delay)
        if query.sku == "boom":
            raise ValueError("no such SKU: boom")
        return Availability(sku=query.sku, available=len(query.sku))

    return service


class TestRoundTrip:
    async def test_request_returns_the_typed_reply(self, make_bus: Buses) -> None:
        """bus.request sends the query to the responder and returns its reply."""
        bus = await make_bus()
        await bus.start(inventory_service())
        reply = await bus.request(GetAvailability(sku="A1"), Availability, timeout=10)
        assert reply == Availability(sku="A1", available=2)

    async def test_a_thousand_concurrent_requests_each_get_their_own_reply(
        self, make_bus: Buses
    ) -> None:
        """Requests are pipelined and replies matched to the right caller."""
        bus = await make_bus()
        await bus.start(inventory_service())
        skus = ["x" * (i % 37 + 1) + f"-{i}" for i in range(1000)]
        replies = await asyncio.gather(
            *(bus.request(GetAvailability(sku=s), Availability, timeout=30) for s in skus)
        )
        assert [r.sku for r in replies] == skus
        assert all(r.available == len(r.sku) for r in replies)
        assert bus.transport.pending_requests == 0

    async def test_ctx_request_continues_the_conversation(self, make_bus: Buses) -> None:
        """A request made in a handler carries its correlation id and names it as cause."""
        asked, replies = Recorder(), Recorder()
        catalog = Service("catalog")

        @catalog.on(SkuProcessed)
        async def check(event: SkuProcessed, ctx: Context) -> None:
            reply = await ctx.request(GetAvailability(sku=event.sku), Availability, timeout=10)
            replies.add((reply, ctx.message_id))

        bus = await make_bus()
        await bus.start(catalog, inventory_service(asked))
        published = await bus.publish(SkuProcessed(sku="A1"), correlation_id="order-7")
        ((reply, handled_id),) = await replies.wait_for(1)
        ((_, responder_ctx),) = asked.items
        assert reply == Availability(sku="A1", available=2)
        assert handled_id == published
        assert responder_ctx.correlation_id == "order-7"
        assert responder_ctx.causation_id == published

    async def test_responders_of_one_service_share_the_load(self, make_bus: Buses) -> None:
        """Two processes of the responding service both answer some requests."""
        seen = Recorder()
        one, two = await make_bus(), await make_bus()
        await one.start(inventory_service(seen, "one"))
        await two.start(inventory_service(seen, "two"))
        requester = await make_bus()
        await asyncio.gather(
            *(
                requester.request(GetAvailability(sku=str(i), delay=0.01), Availability, timeout=30)
                for i in range(100)
            )
        )
        assert len(seen.items) == 100
        assert {instance for instance, _ in seen.items} == {"one", "two"}


class TestFailures:
    async def test_no_responder_fails_at_once(self, make_bus: Buses) -> None:
        """Nothing responds: NoResponder right away, not after the 60 s timeout."""
        bus = await make_bus()
        async with asyncio.timeout(WAIT):
            with pytest.raises(NoResponder, match="no service responds to 'get_availability'"):
                await bus.request(GetAvailability(sku="A1"), Availability, timeout=60)
        assert bus.transport.pending_requests == 0

    async def test_timeout_names_the_request_and_leaks_nothing(self, make_bus: Buses) -> None:
        """A slow responder: RequestTimeout with the name and the timeout."""
        bus = await make_bus()
        await bus.start(inventory_service())
        with pytest.raises(RequestTimeout, match=r"'get_availability' got no reply within 0\.2s"):
            await bus.request(GetAvailability(sku="A1", delay=2), Availability, timeout=0.2)
        assert bus.transport.pending_requests == 0

    async def test_remote_error_reaches_the_requester_and_the_responder_goes_on(
        self, make_bus: Buses
    ) -> None:
        """The responder raised: RemoteError with its type and message; then it serves on."""
        bus = await make_bus()
        await bus.start(inventory_service())
        with pytest.raises(RemoteError) as info:
            await bus.request(GetAvailability(sku="boom"), Availability, timeout=10)
        assert (info.value.type, info.value.message) == ("ValueError", "no such SKU: boom")
        assert info.value.service == "inventory"
        reply = await bus.request(GetAvailability(sku="ok"), Availability, timeout=10)
        assert reply.available == 2

    async def test_reply_of_another_type_is_an_invalid_reply(self, make_bus: Buses) -> None:
        """The responder answers with an event the requester did not expect."""

        class Stock(Event):
            sku: str

        service = Service("inventory")

        @service.responds(GetAvailability)
        async def wrong(query: GetAvailability) -> Stock:
            return Stock(sku=query.sku)

        bus = await make_bus()
        await bus.start(service)
        with pytest.raises(InvalidReply, match="expected a 'availability' reply, got 'stock'"):
            await bus.request(GetAvailability(sku="A1"), Availability, timeout=10)

    async def test_reply_that_fails_validation_is_an_invalid_reply(self, make_bus: Buses) -> None:
        """Same name, other schema: a clear InvalidReply, not a pydantic traceback."""

        class OldAvailability(Event, name="availability"):
            sku: str

        service = Service("inventory")

        @service.responds(GetAvailability)
        async def old(query: GetAvailability) -> OldAvailability:
            return OldAvailability(sku=query.sku)

        bus = await make_bus()
        await bus.start(service)
        with pytest.raises(InvalidReply, match="not a valid Availability"):
            await bus.request(GetAvailability(sku="A1"), Availability, timeout=10)

    async def test_invalid_request_is_answered_with_a_remote_error(self, make_bus: Buses) -> None:
        """A request the responder cannot validate fails fast for the requester."""

        class LooseQuery(Event, name="get_availability"):
            item: int

        bus = await make_bus()
        await bus.start(inventory_service())
        with pytest.raises(RemoteError) as info:
            await bus.request(LooseQuery(item=3), Availability, timeout=10)
        assert info.value.type == "ValidationError"

    async def test_bad_arguments_are_configuration_errors(self, make_bus: Buses) -> None:
        """A reply type that is no event, or a timeout that is not positive."""
        bus = await make_bus()
        with pytest.raises(ConfigurationError):
            await bus.request(GetAvailability(sku="A1"), dict, timeout=1)  # type: ignore[type-var]
        with pytest.raises(ConfigurationError, match="timeout"):
            await bus.request(GetAvailability(sku="A1"), Availability, timeout=0)


class TestRegistration:
    def test_responds_registers_and_returns_the_function(self) -> None:
        """@service.responds is sugar over add_responder."""
        service = Service("inventory")

        async def answer(query: GetAvailability) -> Availability:
            return Availability(sku=query.sku, available=0)

        assert service.responds(GetAvailability)(answer) is answer
        assert service.responders["get_availability"].func is answer

    def test_second_responder_and_non_event_return_are_refused(self) -> None:
        """One responder per request and service; the reply must be an Event."""
        service = Service("inventory")

        @service.responds(GetAvailability)
        async def answer(query: GetAvailability) -> Availability:
            return Availability(sku=query.sku, available=0)

        with pytest.raises(ConfigurationError, match="already responds"):
            service.add_responder(GetAvailability, answer)

        async def returns_int(query: SkuProcessed) -> int:
            return 1

        with pytest.raises(ConfigurationError, match="must return an Event"):
            service.add_responder(SkuProcessed, returns_int)


@pytest.mark.broker
@pytest.mark.parametrize("transport", ["rabbitmq"], indirect=True)
async def test_responder_killed_mid_request_makes_the_requester_time_out(
    make_bus: Buses, namespace: str, tmp_path: Path
) -> None:
    """kill -9 of the responder process: RequestTimeout, no hang, no leaked future."""
    out = tmp_path / "asked"
    make_bus.extra_queues |= {f"{namespace}.answerer.requests", f"{namespace}.answerer.dlq"}
    make_bus.extra_exchanges.add(f"{namespace}.choreo.requests")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "choreo",
        "run",
        "tests.fixtures.responder:service",
        "--broker",
        make_bus.url,
        "--namespace",
        namespace,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CHOREO_TEST_OUT": str(out)},
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(WAIT):
            while b"consuming" not in await process.stderr.readline():
                pass
        bus = await make_bus()
        first = await bus.request(Ask(n=1), Answer, timeout=10)
        assert first.pid == process.pid
        pending = asyncio.ensure_future(bus.request(Ask(n=2, delay=60), Answer, timeout=3))
        async with asyncio.timeout(WAIT):
            while out.read_text().split() != ["1", "2"]:
                await asyncio.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        with pytest.raises(RequestTimeout):
            await pending
        assert bus.transport.pending_requests == 0
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_closing_the_bus_fails_requests_in_flight(make_bus: Buses) -> None:
    """A request still waiting when its bus closes fails with ConnectionFailed at once."""
    bus = await make_bus()
    responder = await make_bus()
    await responder.start(inventory_service())
    pending = asyncio.ensure_future(
        bus.request(GetAvailability(sku="A1", delay=1), Availability, timeout=30)
    )
    async with asyncio.timeout(WAIT):
        while bus.transport.pending_requests == 0:
            await asyncio.sleep(0.01)
    await bus.close()
    with pytest.raises(ConnectionFailed):
        await pending
    assert bus.transport.pending_requests == 0
