"""The one owner of a bus's declarations: exchanges (each declared once, even when many
publishes need it at the same time), queues and exchange-to-exchange bindings, remembered
for cleanup and inspection."""

from __future__ import annotations

import asyncio

from ..transports.base import QueueSpec, Transport

__all__ = ["Declarer"]


class Declarer:
    """Declares on ``transport`` and remembers what it declared."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.exchanges: set[str] = set()
        self.queues: set[str] = set()
        self._exchanges_ready: dict[str, asyncio.Future[None]] = {}
        self._bound: set[tuple[str, str, str]] = set()  # (destination, source, routing key)

    async def exchange(self, name: str, kind: str) -> None:
        """Declare ``exchange`` once, even when many publishes need it at the same time."""
        ready = self._exchanges_ready.get(name)
        if ready is None:
            ready = self._exchanges_ready[name] = asyncio.ensure_future(
                self.transport.declare_exchange(name, kind)
            )
        try:
            await asyncio.shield(ready)
        except BaseException:
            if ready.done() and self._exchanges_ready.get(name) is ready:
                del self._exchanges_ready[name]
            raise
        self.exchanges.add(name)

    async def queue(self, spec: QueueSpec) -> None:
        """Declare the queue ``spec`` and its bindings (idempotent)."""
        await self.transport.declare_queue(spec)
        self.queues.add(spec.name)

    async def bind_exchange(self, destination: str, source: str, routing_key: str) -> None:
        """Bind exchange ``destination`` to exchange ``source``, once per connection."""
        binding = (destination, source, routing_key)
        if binding not in self._bound:
            await self.transport.bind_exchange(destination, source, routing_key)
            self._bound.add(binding)

    def reset(self) -> None:
        """The connection closed: declare again before the next use."""
        self._exchanges_ready.clear()
        self._bound.clear()
