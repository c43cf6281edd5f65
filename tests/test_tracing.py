"""W3C trace context follows an event across services (opentelemetry installed)."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from choreo import Context, Event, Service

from .conftest import Buses
from .helpers import WAIT, Recorder


class OrderPlaced(Event):
    order: str


class OrderBilled(Event):
    order: str


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process: OpenTelemetry's rule
    return exporter


async def test_one_trace_follows_the_event_from_service_to_service(
    make_bus: Buses, spans: InMemorySpanExporter
) -> None:
    """Published in a span: billing's and shipping's handler spans share its trace id,
    and shipping's parent is billing's span."""
    spans.clear()
    seen = Recorder()
    billing, shipping = Service("billing"), Service("shipping")

    @billing.on(OrderPlaced, emits=[OrderBilled])
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        seen.add(("billing", trace.get_current_span().get_span_context()))
        await ctx.publish(OrderBilled(order=event.order))

    @shipping.on(OrderBilled)
    async def ship(event: OrderBilled) -> None:
        seen.add(("shipping", trace.get_current_span().get_span_context()))

    bus = await make_bus()
    await bus.start(billing, shipping)
    with trace.get_tracer("test").start_as_current_span("checkout") as root:
        await bus.publish(OrderPlaced(order="o-1"))
    items = dict(await seen.wait_for(2))
    trace_id = root.get_span_context().trace_id
    assert items["billing"].trace_id == trace_id
    assert items["shipping"].trace_id == trace_id
    async with asyncio.timeout(WAIT):  # a span ends when its handler has returned
        while len(spans.get_finished_spans()) < 3:
            await asyncio.sleep(0.01)
    by_name = {span.name: span for span in spans.get_finished_spans()}
    billing_span = by_name["billing process order_placed"]
    assert billing_span.parent is not None
    assert billing_span.parent.span_id == root.get_span_context().span_id
    shipping_span = by_name["shipping process order_billed"]
    assert shipping_span.parent is not None
    assert shipping_span.parent.span_id == billing_span.context.span_id
    assert shipping_span.kind is trace.SpanKind.CONSUMER
