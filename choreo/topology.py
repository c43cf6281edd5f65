"""Where messages are routed: the names of exchanges and queues, and what a service needs.

* one durable fanout exchange per event: ``<event>`` or ``<namespace>.<event>``
* one durable queue per service: ``<service>`` or ``<namespace>.<service>``, bound to the
  exchange of every event the service handles
* one durable dead-letter queue per service: ``<service queue>.dlq``; the service's queues
  dead-letter into it what the broker drops (expired, rejected, over the delivery limit),
  so ``choreo dlq list`` shows the broker's reason
* one durable quarantine queue per service queue: ``<service queue>.suspect``, where
  redelivered messages wait to be handled one at a time, apart from the rest, so a message
  that keeps killing its worker is found and dead-lettered (``_runtime/suspects.py``)
* one durable retry queue per delay level of the service's retry policies:
  ``<service queue>.retry.<milliseconds>``, whose messages expire after that delay and are
  dead-lettered (through the default exchange) back to the service queue
* with ``queue_type="quorum"``, every queue of the service is a quorum queue; its service
  and quarantine queues also carry ``x-delivery-limit`` with at-least-once dead-lettering
* requests: one durable direct exchange ``choreo.requests`` (``<namespace>.choreo.requests``);
  a responding service's queue ``<service queue>.requests`` is bound to it with the name of
  each request it answers as routing key
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .retry import DEFAULT_RETRY, Retry
from .service import Service
from .transports.base import DIRECT, FANOUT, QueueSpec

__all__ = [
    "DEFAULT_DELIVERY_LIMIT",
    "REQUESTS_EXCHANGE",
    "Topology",
    "dlq_name",
    "exchange_name",
    "plan",
    "queue_name",
    "requests_exchange_name",
    "requests_queue_name",
    "retry_queue",
    "service_queue",
    "suspect_queue_name",
]

QUEUE_TYPES = ("classic", "quorum")

REQUESTS_EXCHANGE = "choreo.requests"
DEFAULT_DELIVERY_LIMIT = 5  # deliveries of one message before it counts as killing workers


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


def suspect_queue_name(service_queue: str) -> str:
    return f"{service_queue}.suspect"


def _type_arguments(queue_type: str) -> tuple[tuple[str, Any], ...]:
    return (("x-queue-type", "quorum"),) if queue_type == "quorum" else ()


def _dead_lettering(dlq: str, queue_type: str, delivery_limit: int) -> tuple[tuple[str, Any], ...]:
    """What the broker drops from a service queue goes to ``dlq``; quorum queues also drop
    (into ``dlq``, at least once) a message delivered more than ``delivery_limit`` times."""
    arguments: tuple[tuple[str, Any], ...] = (
        ("x-dead-letter-exchange", ""),
        ("x-dead-letter-routing-key", dlq),
    )
    if queue_type == "quorum":
        arguments += (
            ("x-delivery-limit", delivery_limit),
            ("x-dead-letter-strategy", "at-least-once"),
            ("x-overflow", "reject-publish"),
        )
    return arguments


def service_queue(
    name: str,
    dlq: str,
    *,
    bindings: tuple[tuple[str, str], ...] = (),
    queue_type: str = "classic",
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
) -> QueueSpec:
    """A queue a service consumes: its event, request or quarantine queue."""
    return QueueSpec(
        name,
        bindings,
        (*_type_arguments(queue_type), *_dead_lettering(dlq, queue_type, delivery_limit)),
    )


def retry_queue(service_queue: str, delay_ms: int, queue_type: str = "classic") -> QueueSpec:
    """The queue that holds a message ``delay_ms`` and then hands it back to ``service_queue``."""
    return QueueSpec(
        f"{service_queue}.retry.{delay_ms}",
        arguments=(
            ("x-message-ttl", delay_ms),
            ("x-dead-letter-exchange", ""),
            ("x-dead-letter-routing-key", service_queue),
            *_type_arguments(queue_type),
        ),
    )


@dataclass(frozen=True, slots=True)
class Topology:
    """Everything the given services need declared on the broker."""

    exchanges: tuple[tuple[str, str], ...]  # (name, FANOUT or DIRECT)
    queues: tuple[QueueSpec, ...]


def plan(
    services: Iterable[Service],
    namespace: str,
    *,
    retry: Retry = DEFAULT_RETRY,
    queue_type: str = "classic",
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
) -> Topology:
    """The exchanges and queues (with bindings) of ``services`` in ``namespace``; ``retry``,
    ``queue_type`` and ``delivery_limit`` are the defaults of services that do not set
    their own."""
    exchanges: dict[str, str] = {}
    queues: list[QueueSpec] = []
    for service in services:
        kind = service.queue_type or queue_type
        limit = service.delivery_limit or delivery_limit
        dlq = dlq_name(namespace, service.name)
        options: dict[str, Any] = {"queue_type": kind, "delivery_limit": limit}
        if service.handlers:
            queue = queue_name(namespace, service.name)
            bound = tuple((exchange_name(namespace, name), "") for name in service.handlers)
            exchanges.update(dict.fromkeys((name for name, _ in bound), FANOUT))
            queues.append(service_queue(queue, dlq, bindings=bound, **options))
            queues.append(service_queue(suspect_queue_name(queue), dlq, **options))
            policies = {h.retry or service.retry or retry for h in service.handlers.values()}
            delays = sorted(set().union(*(policy.broker_delays_ms() for policy in policies)))
            queues.extend(retry_queue(queue, delay, kind) for delay in delays)
        if service.responders:
            requests = requests_exchange_name(namespace)
            exchanges[requests] = DIRECT
            keys = tuple((requests, name) for name in service.responders)
            name = requests_queue_name(namespace, service.name)
            queues.append(service_queue(name, dlq, bindings=keys, **options))
        queues.append(QueueSpec(dlq, arguments=_type_arguments(kind)))
    return Topology(tuple(exchanges.items()), tuple(queues))
