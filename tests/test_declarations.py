"""What services declare they send (emits=, requests=), and what ctx.publish/ctx.request
do with it: the x-choreo-source header, one warning per undeclared name."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from choreo import ConfigurationError, Context, Event, Service
from choreo.wire import SOURCE_HEADER

from .conftest import Buses
from .helpers import Recorder


class SkuReceived(Event):
    sku: str


class SkuProcessed(Event):
    sku: str


class PriceChanged(Event):
    sku: str


class GetStock(Event):
    sku: str


class Stock(Event):
    sku: str
    units: int


class TestDeclaring:
    def test_service_and_handler_declarations_are_stored(self) -> None:
        """emits/requests on Service and on @on are kept, as tuples of classes."""
        service = Service("inventory", emits=[PriceChanged], requests=[GetStock])

        @service.on(SkuReceived, emits=[SkuProcessed, SkuProcessed], requests=[GetStock])
        async def record(event: SkuReceived) -> None:
            pass

        handler = service.handlers["sku_received"]
        assert (service.emits, service.requests) == ((PriceChanged,), (GetStock,))
        assert (handler.emits, handler.requests) == ((SkuProcessed,), (GetStock,))

    def test_responder_keeps_its_reply_type_and_declarations(self) -> None:
        """@responds records the reply type its return annotation names, and its emits."""
        service = Service("inventory")

        @service.responds(GetStock, emits=[PriceChanged])
        async def stock(query: GetStock) -> Stock:
            return Stock(sku=query.sku, units=1)

        responder = service.responders["get_stock"]
        assert (responder.reply_type, responder.emits) == (Stock, (PriceChanged,))

    @pytest.mark.parametrize(
        "value", [[int], ["sku_processed"], SkuProcessed, "sku_processed", [Event], 3]
    )
    @pytest.mark.parametrize("where", ["service", "on", "responds", "add_handler"])
    def test_anything_but_a_list_of_event_classes_is_refused(self, where: str, value: Any) -> None:
        """A non-Event, the Event base, or a bare class instead of a list: ConfigurationError."""

        async def handle(event: SkuReceived) -> None:
            pass

        declare = {
            "service": lambda: Service("catalog", emits=value),
            "on": lambda: Service("catalog").on(SkuReceived, emits=value),
            "responds": lambda: Service("catalog").responds(SkuReceived, emits=value),
            "add_handler": lambda: Service("catalog").add_handler(SkuReceived, handle, emits=value),
        }[where]
        with pytest.raises(ConfigurationError, match="emits must"):
            declare()

    def test_requests_are_validated_too(self) -> None:
        """requests= goes through the same check."""
        with pytest.raises(ConfigurationError, match=r"requests must list choreo\.Event"):
            Service("catalog", requests=[object])

    def test_may_emit_combines_service_and_handler(self) -> None:
        """A handler may publish what it or its service declares; other handlers may not."""
        service = Service("inventory", emits=[PriceChanged])

        @service.on(SkuReceived, emits=[SkuProcessed])
        async def record(event: SkuReceived) -> None:
            pass

        @service.on(SkuProcessed)
        async def recalculate(event: SkuProcessed) -> None:
            pass

        assert service.may_emit("sku_processed", "sku_received")
        assert service.may_emit("price_changed", "sku_processed")
        assert not service.may_emit("sku_processed", "sku_processed")
        assert not service.may_emit("sku_processed")

    def test_a_service_with_only_emits_can_be_declared_but_not_started_alone(self) -> None:
        """Service('feed', emits=[...]) is valid: it describes a publisher with no handlers."""
        feed = Service("feed", emits=[SkuReceived])
        assert (feed.handlers, feed.responders, feed.emits) == ({}, {}, (SkuReceived,))


def relay(name: str, seen: Recorder, **declarations: Any) -> Service:
    """A service that republishes every sku_received as sku_processed."""
    service = Service(name, **declarations.pop("service", {}))

    @service.on(SkuReceived, **declarations)
    async def forward(event: SkuReceived, ctx: Context) -> None:
        await ctx.publish(SkuProcessed(sku=event.sku))
        await ctx.publish(SkuProcessed(sku=event.sku + "-again"))
        seen.add(event.sku)

    return service


def listener(seen: Recorder) -> Service:
    service = Service("listener")

    @service.on(SkuProcessed)
    async def heard(event: SkuProcessed, ctx: Context) -> None:
        seen.add((event.sku, dict(ctx.headers)))

    return service


def undeclared(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "without declaring" in r.getMessage()]


class TestPublishingThroughTheContext:
    async def test_published_events_carry_the_source_service(self, make_bus: Buses) -> None:
        """ctx.publish adds x-choreo-source: <service>; bus.publish adds nothing."""
        relayed, heard = Recorder(), Recorder()
        bus = await make_bus()
        await bus.start(relay("relay", relayed, emits=[SkuProcessed]), listener(heard))
        await bus.publish(SkuReceived(sku="A1"))
        await bus.publish(SkuProcessed(sku="direct"))
        headers = dict(await heard.wait_for(3))
        assert headers["A1"][SOURCE_HEADER] == "relay"
        assert SOURCE_HEADER not in headers["direct"]

    @pytest.mark.parametrize("transport", ["memory"], indirect=True)
    async def test_undeclared_event_warns_once_per_service_and_event(
        self, make_bus: Buses, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Two publishes by each of two messages: one warning, naming service and event."""
        relayed, heard = Recorder(), Recorder()
        bus = await make_bus()
        await bus.start(relay("relay", relayed), listener(heard))
        with caplog.at_level(logging.WARNING, logger="choreo"):
            await bus.publish(SkuReceived(sku="A1"))
            await bus.publish(SkuReceived(sku="A2"))
            await heard.wait_for(4)
        (warning,) = undeclared(caplog)
        assert "'relay' published 'sku_processed'" in warning
        assert "emits=[SkuProcessed]" in warning

    @pytest.mark.parametrize("transport", ["memory"], indirect=True)
    @pytest.mark.parametrize(
        "declarations",
        [{"emits": [SkuProcessed]}, {"service": {"emits": [SkuProcessed]}}],
        ids=["on-the-handler", "on-the-service"],
    )
    async def test_declared_event_does_not_warn(
        self, make_bus: Buses, caplog: pytest.LogCaptureFixture, declarations: dict[str, Any]
    ) -> None:
        """Declared on the handler or on its service: published without a warning."""
        relayed, heard = Recorder(), Recorder()
        bus = await make_bus()
        await bus.start(relay("relay", relayed, **declarations), listener(heard))
        with caplog.at_level(logging.WARNING, logger="choreo"):
            await bus.publish(SkuReceived(sku="A1"))
            await heard.wait_for(2)
        assert undeclared(caplog) == []

    @pytest.mark.parametrize("transport", ["memory"], indirect=True)
    async def test_undeclared_request_warns_once(
        self, make_bus: Buses, caplog: pytest.LogCaptureFixture
    ) -> None:
        """ctx.request of a request the service did not declare: one warning; the reply
        still arrives."""
        replies = Recorder()
        stock, asker = Service("stock"), Service("asker")

        @stock.responds(GetStock)
        async def answer(query: GetStock) -> Stock:
            return Stock(sku=query.sku, units=2)

        @asker.on(SkuReceived)
        async def ask(event: SkuReceived, ctx: Context) -> None:
            replies.add(await ctx.request(GetStock(sku=event.sku), Stock))

        bus = await make_bus()
        await bus.start(stock, asker)
        with caplog.at_level(logging.WARNING, logger="choreo"):
            await bus.publish(SkuReceived(sku="A1"))
            await bus.publish(SkuReceived(sku="A2"))
            assert {r.units for r in await replies.wait_for(2)} == {2}
        (warning,) = undeclared(caplog)
        assert "'asker' sent the request 'get_stock'" in warning
        assert "requests=[GetStock]" in warning
