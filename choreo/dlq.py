"""Dead-letter queue tools: list, replay and purge a service's ``.dlq`` queue.

Replay moves messages back to the service's own queue only (never to the fanout
exchange: the other services already handled them), without the failure headers, so the
attempts start again at 1. Each replayed copy is confirmed by the broker before its dead
letter is removed, so a crash mid-replay can duplicate a message but never lose one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import topology
from .deadletter import for_replay

if TYPE_CHECKING:
    from .bus import Bus

__all__ = ["DeadLetter", "list_dead_letters", "purge", "replay"]

PREVIEW = 120


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What ``choreo dlq list`` shows of one dead letter."""

    message_id: str | None
    event: str
    error_type: str
    error_message: str
    attempts: int
    failed_at: str
    preview: str

    @classmethod
    def from_headers(
        cls, message_id: str | None, headers: dict[str, Any], body: bytes
    ) -> DeadLetter:
        text = body[:PREVIEW].decode("utf-8", errors="replace")
        attempts = headers.get("x-choreo-attempts", 0)
        return cls(
            message_id=message_id,
            event=str(headers.get("x-choreo-event", "")),
            error_type=str(headers.get("x-choreo-error-type", "")),
            error_message=str(headers.get("x-choreo-error-message", "")),
            attempts=attempts if isinstance(attempts, int) else 0,
            failed_at=str(headers.get("x-choreo-failed-at", "")),
            preview=text + ("..." if len(body) > PREVIEW else ""),
        )


async def list_dead_letters(bus: Bus, service: str, limit: int = 100) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``service``, oldest first; they stay in the queue."""
    dlq = topology.dlq_name(bus.namespace, service)
    async with bus.transport.fetch(dlq, limit) as deliveries:
        return [
            DeadLetter.from_headers(d.message.message_id, d.message.headers, d.message.body)
            for d in deliveries
        ]


async def replay(bus: Bus, service: str, message_id: str | None = None) -> int:
    """Move the dead letters of ``service`` (only ``message_id``, if given) back to its queue."""
    dlq = topology.dlq_name(bus.namespace, service)
    target = topology.queue_name(bus.namespace, service)
    await bus.transport.queue_size(target)  # fails clearly when the service queue is missing
    moved = 0
    async with bus.transport.fetch(dlq, await bus.transport.queue_size(dlq)) as deliveries:
        for delivery in deliveries:
            if message_id is not None and delivery.message.message_id != message_id:
                continue  # left unsettled: back in the DLQ, in order, when the block ends
            await bus.transport.publish(for_replay(delivery.message), "", target, mandatory=True)
            await delivery.ack()
            moved += 1
    return moved


async def purge(bus: Bus, service: str) -> int:
    """Drop every dead letter of ``service``; return how many there were."""
    return await bus.transport.purge(topology.dlq_name(bus.namespace, service))
