"""Where messages are routed: the names of exchanges and queues, and what a service needs.

* one durable fanout exchange per event: ``<event>`` or ``<namespace>.<event>``
* one durable queue per service: ``<service>`` or ``<namespace>.<service>``, bound to the
  exchange of every event the service handles
* one durable dead-letter queue per service: ``<service queue>.dlq``
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .service import Service
from .transports.base import QueueSpec

__all__ = ["Topology", "dlq_name", "exchange_name", "plan", "queue_name"]


def _qualify(namespace: str, name: str) -> str:
    return f"{namespace}.{name}" if namespace else name


def exchange_name(namespace: str, event_name: str) -> str:
    return _qualify(namespace, event_name)


def queue_name(namespace: str, service_name: str) -> str:
    return _qualify(namespace, service_name)


def dlq_name(namespace: str, service_name: str) -> str:
    return f"{queue_name(namespace, service_name)}.dlq"


@dataclass(frozen=True, slots=True)
class Topology:
    """Everything the given services need declared on the broker."""

    exchanges: tuple[str, ...]
    queues: tuple[QueueSpec, ...]


def plan(services: Iterable[Service], namespace: str) -> Topology:
    """The exchanges and queues (with bindings) of ``services`` in ``namespace``."""
    exchanges: dict[str, None] = {}
    queues: list[QueueSpec] = []
    for service in services:
        bound = tuple(exchange_name(namespace, name) for name in service.handlers)
        exchanges.update(dict.fromkeys(bound))
        queues.append(QueueSpec(queue_name(namespace, service.name), bound))
        queues.append(QueueSpec(dlq_name(namespace, service.name)))
    return Topology(tuple(exchanges), tuple(queues))
