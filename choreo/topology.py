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
* ordering (``Service(..., partitions=N)``): an event's routing key is its bucket, the
  decimal ``crc32(utf-8 of str(key)) % 1024`` of its ordering key (``Event`` ``key=``;
  no key: of its message id); a partitioned service has, instead of its one queue, the
  direct exchange ``<service queue>.partitions`` bound to each handled event's exchange
  and N queues ``<service queue>.p<i>``, ``p<i>`` bound to the buckets ``b % N == i``,
  each with ``x-single-active-consumer`` (``partition_plan``)
* delayed publishing: per namespace, the delay levels ``choreo.delay.<kk>`` (a topic
  exchange and a classic queue each) and the delivery exchange ``choreo.delay.deliver``,
  bound to each destination exchange; the routing key of a delayed message is its delay
  in binary and its destination (``delay_plan``, ``delay_routing_key``; ``delay.py``)
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .delay import LEVELS
from .errors import ConfigurationError
from .retry import DEFAULT_RETRY, Retry
from .service import Service
from .transports.base import DIRECT, FANOUT, TOPIC, QueueSpec

__all__ = [
    "BUCKETS",
    "DEFAULT_DELIVERY_LIMIT",
    "DELAY_EXCHANGE",
    "PRESENCE_EXPIRES",
    "REQUESTS_EXCHANGE",
    "Topology",
    "bucket_of",
    "delay_delivery_key",
    "delay_delivery_name",
    "delay_level_name",
    "delay_plan",
    "delay_routing_key",
    "dlq_name",
    "exchange_name",
    "partition_exchange_name",
    "partition_plan",
    "partition_queue_name",
    "plan",
    "presence_exchange_name",
    "presence_queue",
    "queue_name",
    "requests_exchange_name",
    "requests_queue_name",
    "retry_queue",
    "routing_key_of",
    "service_queue",
    "suspect_queue_name",
]

QUEUE_TYPES = ("classic", "quorum")

REQUESTS_EXCHANGE = "choreo.requests"
DELAY_EXCHANGE = "choreo.delay"  # the delay levels ".<kk>" and the delivery exchange ".deliver"
DEFAULT_DELIVERY_LIMIT = 5  # deliveries of one message before it counts as killing workers
BUCKETS = 1024  # hash buckets of ordering keys; an event's routing key is its bucket


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


def bucket_of(key: str) -> int:
    """The bucket of an ordering key: ``crc32`` of its UTF-8 bytes, modulo ``BUCKETS``."""
    return zlib.crc32(key.encode("utf-8")) % BUCKETS


def routing_key_of(key: str | None, message_id: str | None) -> str:
    """The routing key an event is published with: the bucket of its ordering key, or of
    its message id when it has none (no ordering promise; spread over the partitions)."""
    return str(bucket_of(key if key is not None else message_id or ""))


def partition_exchange_name(namespace: str, service_name: str) -> str:
    return f"{queue_name(namespace, service_name)}.partitions"


def partition_queue_name(namespace: str, service_name: str, partition: int) -> str:
    return f"{queue_name(namespace, service_name)}.p{partition}"


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

    exchanges: tuple[tuple[str, str], ...]  # (name, FANOUT, DIRECT or TOPIC)
    queues: tuple[QueueSpec, ...]
    exchange_bindings: tuple[tuple[str, str, str], ...] = ()  # (destination, source, key)


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
    exchange_bindings: list[tuple[str, str, str]] = []
    for service in services:
        kind = service.queue_type or queue_type
        limit = service.delivery_limit or delivery_limit
        dlq = dlq_name(namespace, service.name)
        options: dict[str, Any] = {"queue_type": kind, "delivery_limit": limit}
        if service.handlers and service.partitions:
            exchanges.update(dict.fromkeys(_exchanges_of(service, namespace), FANOUT))
            _check_in_process(service, retry)
            partitioned = partition_plan(service, namespace, dlq, **options)
            exchanges.update(partitioned.exchanges)
            queues.extend(partitioned.queues)
            queues.extend(
                service_queue(suspect_queue_name(partition.name), dlq, **options)
                for partition in partitioned.queues
            )
            exchanges[presence_exchange_name(namespace, service.name)] = FANOUT
            exchange_bindings.extend(partitioned.exchange_bindings)
        elif service.handlers:
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
    return Topology(tuple(exchanges.items()), tuple(queues), tuple(exchange_bindings))


def _exchanges_of(service: Service, namespace: str) -> list[str]:
    return [exchange_name(namespace, name) for name in service.handlers]


def _check_in_process(service: Service, default: Retry) -> None:
    """A partitioned service retries in the process only: a retry through the broker would
    put the message behind later events of its key."""
    for handler in service.handlers.values():
        policy = handler.retry or service.retry or default
        if policy.broker_delays_ms():
            raise ConfigurationError(
                f"service {service.name!r} is partitioned (ordered per key), but the retry "
                f"policy of {handler.event_name!r} waits through the broker (waits over "
                f"in_process_max_delay={policy.in_process_max_delay:g}s), which would reorder "
                "its key: raise in_process_max_delay, or lower max_delay/attempts"
            )


def partition_plan(
    service: Service,
    namespace: str,
    dlq: str,
    *,
    queue_type: str = "classic",
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
) -> Topology:
    """The partitions of ``service``: its direct exchange, bound to the exchange of each
    event it handles, and its N queues, ``p<i>`` bound to the buckets ``b % N == i``, each
    with one active consumer at a time across all processes."""
    count = service.partitions or 1
    partitions = partition_exchange_name(namespace, service.name)
    queues = tuple(
        QueueSpec(
            partition_queue_name(namespace, service.name, i),
            tuple((partitions, str(b)) for b in range(i, BUCKETS, count)),
            (
                ("x-single-active-consumer", True),
                *service_queue(
                    "", dlq, queue_type=queue_type, delivery_limit=delivery_limit
                ).arguments,
            ),
        )
        for i in range(count)
    )
    bindings = tuple((partitions, source, "") for source in _exchanges_of(service, namespace))
    return Topology(((partitions, DIRECT),), queues, bindings)


# -- delayed publishing (see delay.py) ------------------------------------------------------


def delay_level_name(namespace: str, level: int) -> str:
    """The exchange, and the queue, of delay level ``level`` (it waits ``2**level`` s)."""
    return f"{_qualify(namespace, DELAY_EXCHANGE)}.{level:02d}"


def delay_delivery_name(namespace: str) -> str:
    """The exchange the last delay level hands messages to, bound to their destinations."""
    return f"{_qualify(namespace, DELAY_EXCHANGE)}.deliver"


def delay_routing_key(seconds: int, destination: str) -> str:
    """The routing key of a message delayed ``seconds`` (0 < seconds < 2**LEVELS) on its
    way to the exchange ``destination``: one word per level, highest first, ``1`` where
    it waits, then the destination's name."""
    return ".".join(format(seconds, f"0{LEVELS}b")) + "." + destination


def delay_delivery_key(destination: str) -> str:
    """The binding of ``destination`` to the delivery exchange: any delay, exactly that
    destination (``*`` is one word, so another exchange ending in the same words is not
    matched)."""
    return "*." * LEVELS + destination


def delay_plan(namespace: str) -> Topology:
    """The delay levels of ``namespace``: their exchanges, their queues (level ``k`` holds
    a message ``2**k`` s, then dead-letters it to level ``k-1``, level 0 to the delivery
    exchange), and the exchange-to-exchange bindings that skip a level whose bit is 0."""
    deliver = delay_delivery_name(namespace)
    exchanges = [(deliver, TOPIC)]
    queues, bindings = [], []
    for level in range(LEVELS - 1, -1, -1):
        name = delay_level_name(namespace, level)
        below = delay_level_name(namespace, level - 1) if level else deliver
        higher = "*." * (LEVELS - 1 - level)  # the words of the levels above
        exchanges.append((name, TOPIC))
        arguments = (
            ("x-queue-type", "classic"),
            ("x-message-ttl", 1000 << level),
            ("x-dead-letter-exchange", below),
        )
        queues.append(QueueSpec(name, ((name, f"{higher}1.#"),), arguments))
        bindings.append((below, name, f"{higher}0.#"))
    return Topology(tuple(exchanges), tuple(queues), tuple(bindings))


# -- partition presence (see _runtime/presence.py) ------------------------------------------

PRESENCE_EXPIRES = 10_000  # ms a presence queue outlives its process (x-expires)


def presence_exchange_name(namespace: str, service_name: str) -> str:
    """The fanout exchange the processes of a partitioned service announce themselves on."""
    return f"{queue_name(namespace, service_name)}.presence"


def presence_queue(namespace: str, service_name: str, node: str, ttl: float) -> QueueSpec:
    """The presence queue of one process (``node``): bound to the presence exchange, its
    announcements dropped after ``ttl`` s, the queue itself deleted by the broker
    ``PRESENCE_EXPIRES`` ms after its process is gone (a kill -9 leaves nothing behind)."""
    exchange = presence_exchange_name(namespace, service_name)
    arguments = (
        ("x-queue-type", "classic"),
        ("x-message-ttl", max(1, int(ttl * 1000))),
        ("x-expires", PRESENCE_EXPIRES),
    )
    return QueueSpec(f"{exchange}.{node}", ((exchange, ""),), arguments)
