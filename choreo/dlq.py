"""Dead-letter queue tools: list, replay and purge a service's ``.dlq`` queue.

Replay moves messages back to the service's own queue only (never to the fanout
exchange: the other services already handled them), or to its request queue for a
request, without the failure headers, so the attempts start again at 1; in bounded
batches, whatever the size of the DLQ. A partitioned service (``Service(partitions=N)``)
has no queue of its own: its events go back through its partition exchange, each by the
bucket it was routed with (``wire.routing_key_died_with``), into the partition that owns
its key now, behind the events of that key already there. Each replayed copy is confirmed
by the broker before its dead letter is removed, so a crash mid-replay can duplicate a
message but never lose one.
Where messages are dead-lettered is ``_runtime/settle.py``; what a dead letter carries is
``wire.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from . import topology
from .errors import ChoreoError, ConnectionFailed
from .events import ordering_key_in
from .transports.base import Delivery, Transport
from .wire import DeadLetter, for_replay, routing_key_died_with

__all__ = ["REPLAY_BATCH", "DeadLetter", "list_dead_letters", "purge", "replay"]

REPLAY_BATCH = 1000  # dead letters held at once by a replay

log = logging.getLogger("choreo.dlq")


class Broker(Protocol):
    """Where the dead letters are: a transport and a namespace (``choreo.Bus`` is one)."""

    transport: Transport
    namespace: str


async def list_dead_letters(broker: Broker, service: str, limit: int = 100) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``service``, oldest first; they stay in the queue."""
    dlq = topology.dlq_name(broker.namespace, service)
    async with broker.transport.fetch(dlq, limit) as deliveries:
        return [DeadLetter.read(d.message) for d in deliveries]


async def replay(
    broker: Broker,
    service: str,
    message_id: str | None = None,
    *,
    batch: int = REPLAY_BATCH,
    progress: Callable[[int, int], None] | None = None,
    by_message_id: Callable[[str | None], None] | None = None,
) -> int:
    """Move the dead letters of ``service`` (only ``message_id``, if given) back to the
    queue they came from: a request (it has a ``reply_to``) to ``<service>.requests``,
    an event to ``<service>``, or, when the service is partitioned, to its partition
    exchange ``<service>.partitions`` with the bucket it was routed by as routing key, which
    takes it to the partition queue that owns its key (it is then handled after the events
    of its key already queued: ordered by when it is replayed). Returns how many moved.

    The service counts as partitioned when ``<service>.partitions`` exists: that exchange
    is what the replay publishes to, only a partitioned service declares it, and ``choreo
    topology --apply`` deletes the plain queue of a service that became partitioned only
    once it is empty (a leftover queue would swallow the replay with nobody reading it).
    The bucket is the one the dead letter recorded (``x-choreo-routing-key``), else the
    broker's ``x-death`` routing key, else that of its ordering key when this process
    defines its event class; failing all three (a dead letter of an older choreo) it is
    the bucket of its message id, which may be another partition than its key's:
    ``by_message_id(message_id)`` is called for each, and a warning is logged.

    All of them go in batches of ``batch``, up to the number the DLQ held at the start
    (what is dead-lettered meanwhile waits for the next replay); ``progress(moved, total)``
    is called after each. Each copy is confirmed before its dead letter is removed. A
    connection lost on the way raises ``ConnectionFailed`` saying how many moved and that
    the last one may now be in both queues.
    """
    transport = broker.transport
    dlq = topology.dlq_name(broker.namespace, service)
    events = topology.queue_name(broker.namespace, service)
    requests = topology.requests_queue_name(broker.namespace, service)
    partitions = topology.partition_exchange_name(broker.namespace, service)
    total = await transport.queue_size(dlq)
    partitioned = await transport.exchange_exists(partitions)
    moved = 0
    while moved < total:
        size = total if message_id is not None else min(batch, total - moved)
        async with transport.fetch(dlq, size) as deliveries:
            if not deliveries:
                break
            for delivery in deliveries:
                if message_id is not None and delivery.message.message_id != message_id:
                    continue  # left unsettled: back in the DLQ, in order, when the block ends
                if delivery.message.reply_to:
                    exchange, key = "", requests
                elif partitioned:
                    exchange, key = partitions, _bucket(delivery, by_message_id)
                else:
                    exchange, key = "", events
                target = f"{exchange} (routing key {key})" if exchange else key
                await transport.publish(for_replay(delivery.message), exchange, key, mandatory=True)
                try:
                    await delivery.ack()
                except ChoreoError as exc:
                    raise ConnectionFailed(
                        f"replay of {service} stopped after {moved} of {total}: {exc}; "
                        f"message {delivery.message.message_id} was replayed to {target} and "
                        "may still be in the DLQ too (its removal was not confirmed)"
                    ) from exc
                moved += 1
                if message_id is not None:
                    return moved
        if progress is not None:
            progress(moved, total)
        if message_id is not None:
            break
    return moved


def _bucket(delivery: Delivery, by_message_id: Callable[[str | None], None] | None) -> str:
    """The routing key a dead event goes back to its partition with (see ``replay``)."""
    message = delivery.message
    bucket = routing_key_died_with(message)
    if bucket is not None and int(bucket) < topology.BUCKETS:
        return bucket
    key = ordering_key_in(message.type or "", message.body)
    if key is None:
        log.warning(
            "dead letter %s (%s) says not which bucket it was routed by: replayed by the "
            "bucket of its message id, which may be another partition than its key's",
            message.message_id,
            message.type,
        )
        if by_message_id is not None:
            by_message_id(message.message_id)
    return topology.routing_key_of(key, message.message_id)


async def purge(broker: Broker, service: str) -> int:
    """Drop every dead letter of ``service``; return how many there were."""
    return await broker.transport.purge(topology.dlq_name(broker.namespace, service))
