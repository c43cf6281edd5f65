"""Prometheus metrics and the ``/metrics`` + ``/healthz`` endpoint of ``choreo run``.

Needs the optional extra ``choreo-mq[metrics]`` (prometheus-client). Metrics, per service
and event: ``choreo_consumed_total``, ``choreo_handled_total`` (by outcome: ok, retry,
requeued, dead-lettered, poison, error, quarantined, duplicate, handed-back, saga-completed; see
``observer.Outcome``), ``choreo_handler_duration_seconds``; per service
``choreo_in_flight`` and ``choreo_inbox_duplicates_total`` (redeliveries a store's inbox
had handled already: acked without running the handler); per event
``choreo_published_total`` and ``choreo_publish_confirm_seconds``; per store (its
``name``) ``choreo_outbox_relayed_total`` (rows the relay published, confirmed) and
``choreo_outbox_pending`` (rows committed, not yet confirmed; updated every few seconds).
``/healthz`` answers 200 while the bus is connected and consuming, 503 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .observer import Observer, Outcome

if TYPE_CHECKING:
    from ..bus import Bus

__all__ = ["PrometheusObserver", "serve"]


class PrometheusObserver(Observer):
    """Logs like the default observer, and counts into its own registry."""

    def __init__(self) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise ConfigurationError(
                "metrics need prometheus-client: pip install 'choreo-mq[metrics]'"
            ) from None
        self.registry = CollectorRegistry()
        labels = ("service", "event")
        self._consumed = Counter(
            "choreo_consumed", "Messages consumed", labels, registry=self.registry
        )
        self._handled = Counter(
            "choreo_handled", "Messages settled, by outcome", (*labels, "outcome"),
            registry=self.registry,
        )  # fmt: skip
        self._duration = Histogram(
            "choreo_handler_duration_seconds", "Time from start to settle", labels,
            registry=self.registry,
        )  # fmt: skip
        self._published = Counter(
            "choreo_published", "Publishes confirmed", ("event",), registry=self.registry
        )
        self._confirm = Histogram(
            "choreo_publish_confirm_seconds", "Time to the broker's confirm", ("event",),
            registry=self.registry,
        )  # fmt: skip
        self._duplicates = Counter(
            "choreo_inbox_duplicates", "Redeliveries the inbox had handled already",
            ("service",), registry=self.registry,
        )  # fmt: skip
        self._relayed = Counter(
            "choreo_outbox_relayed", "Outbox rows published (confirmed)", ("store",),
            registry=self.registry,
        )  # fmt: skip
        self._pending = Gauge(
            "choreo_outbox_pending", "Outbox rows committed, not yet confirmed", ("store",),
            registry=self.registry,
        )  # fmt: skip
        self.bus: Bus | None = None
        self.registry.register(_InFlight(self))

    def handled(
        self,
        service: str,
        event: str | None,
        outcome: Outcome,
        duration: float,
        attempt: int,
        message_id: str | None,
        correlation_id: str | None,
    ) -> None:
        super().handled(service, event, outcome, duration, attempt, message_id, correlation_id)
        name = event or ""
        self._consumed.labels(service, name).inc()
        self._handled.labels(service, name, outcome.value).inc()
        self._duration.labels(service, name).observe(duration)
        if outcome is Outcome.DUPLICATE:
            self._duplicates.labels(service).inc()

    def published(self, event: str, confirm_seconds: float) -> None:
        self._published.labels(event).inc()
        self._confirm.labels(event).observe(confirm_seconds)

    def relayed(self, store: str, count: int) -> None:
        self._relayed.labels(store).inc(count)

    def outbox_pending(self, store: str, pending: int) -> None:
        self._pending.labels(store).set(pending)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


class _InFlight:
    """``choreo_in_flight{service}``, read from the bus at scrape time (a collector)."""

    def __init__(self, observer: PrometheusObserver) -> None:
        self.observer = observer

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        gauge = GaugeMetricFamily(
            "choreo_in_flight", "Deliveries being handled", labels=["service"]
        )
        bus = self.observer.bus
        for service in bus.running if bus is not None else ():
            gauge.add_metric([service], bus.in_flight_of(service))  # type: ignore[union-attr]
        yield gauge


@contextlib.asynccontextmanager
async def serve(bus: Bus, observer: PrometheusObserver, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``/metrics`` and ``/healthz`` for ``bus`` while the block runs; yields the port."""
    observer.bus = bus

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing in them matters here
            path = request.split(b" ")[1] if request.count(b" ") >= 2 else b""
            if path == b"/metrics":
                status, body, kind = "200 OK", observer.exposition(), "text/plain; version=0.0.4"
            elif path == b"/healthz":
                healthy = bus.healthy
                status = "200 OK" if healthy else "503 Service Unavailable"
                body, kind = (b"ok\n" if healthy else b"unavailable\n"), "text/plain"
            else:
                status, body, kind = "404 Not Found", b"not found\n", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
