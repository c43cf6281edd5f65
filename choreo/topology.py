"""Where messages are routed: the names of exchanges and queues, and what a service needs.

* one durable fanout exchange per event: ``<event>`` or ``<namespace>.<event>``
* one durable queue per service: ``<service>`` or ``<namespace>.<service>``, bound to the
  exchange of every event the service handles
* one durable dead-letter queue per service: ``<service queue>.dlq``
* requests: one durable direct exchange ``choreo.requests`` (``<namespace>.choreo.requests``);
  a responding service's queue ``<service queue>.requests`` is bound to it with the name of
  each request it answers as routing key
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .service import Service
from .transports.base import DIRECT, FANOUT, QueueSpec

__all__ = [
    "REQUESTS_EXCHANGE",
    "Topology",
    "dlq_name",
    "exchange_name",
    "plan",
    "queue_name",
    "requests_exchange_name",
    "requests_queue_name",
]

REQUESTS_EXCHANGE = "choreo.requests"


def _qualify(namespace: str, name: str) -> str:
    return f"{namespace}.{name}" if namespace else name


def exchange_name(namespace: str, event_name: str) -> str:
    return _qualify(namespace, event_name)


def queue_name(namespace: str, service_name: str) -> str:
    return _qualify(namespace, service_name)


def dlq_name(namespace: str, service_name: str) -> str:
    return f"{queue_name(namespace, service_name)}.dlq"


def requests_exchange_name(namespace: str) -> str:
    return _qualify(namespace, REQUESTS_EXCHANGE)


def requests_queue_name(namespace: str, service_name: str) -> str:
    return f"{queue_name(namespace, service_name)}.requests"


@dataclass(frozen=True, slots=True)
class Topology:
    """Everything the given services need declared on the broker."""

    exchanges: tuple[tuple[str, str], ...]  # (name, FANOUT or DIRECT)
    queues: tuple[QueueSpec, ...]


def plan(services: Iterable[Service], namespace: str) -> Topology:
    """The exchanges and queues (with bindings) of ``services`` in ``namespace``."""
    exchanges: dict[str, str] = {}
    queues: list[QueueSpec] = []
    for service in services:
        if service.handlers:
            bound = tuple((exchange_name(namespace, name), "") for name in service.handlers)
            exchanges.update(dict.fromkeys((name for name, _ in bound), FANOUT))
            queues.append(QueueSpec(queue_name(namespace, service.name), bound))
        if service.responders:
            requests = requests_exchange_name(namespace)
            exchanges[requests] = DIRECT
            keys = tuple((requests, name) for name in service.responders)
            queues.append(QueueSpec(requests_queue_name(namespace, service.name), keys))
        queues.append(QueueSpec(dlq_name(namespace, service.name)))
    return Topology(tuple(exchanges.items()), tuple(queues))
