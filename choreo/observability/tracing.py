"""W3C trace context across services, when ``opentelemetry-api`` is installed.

``pip install 'choreo-mq[otel]'``: every publish and request carries the current trace
context in its headers (``traceparent``, ``tracestate``), and every handler runs in a
CONSUMER span whose parent is the context the message carried, so one trace follows an
event from service to service. Without OpenTelemetry this module does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import propagate, trace

    ENABLED = True
except ImportError:  # pragma: no cover - the extra is not installed
    ENABLED = False

__all__ = ["ENABLED", "handling", "inject"]


def inject(headers: dict[str, Any]) -> None:
    """Add the current trace context to ``headers`` (nothing without a current span)."""
    if ENABLED:
        propagate.inject(headers)


@contextlib.contextmanager
def handling(headers: Mapping[str, Any], service: str, event: str | None) -> Iterator[None]:
    """Run the block in a CONSUMER span, child of the trace context in ``headers``."""
    if not ENABLED:
        yield
        return
    carrier = {k: v for k, v in headers.items() if isinstance(v, str)}
    tracer = trace.get_tracer("choreo")
    with tracer.start_as_current_span(
        f"{service} process {event}",
        context=propagate.extract(carrier),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "rabbitmq",
            "messaging.operation": "process",
            "messaging.destination.name": event or "",
            "messaging.consumer.group.name": service,
        },
    ):
        yield
