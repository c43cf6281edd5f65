"""The worker of one partition queue of a partitioned service: events of one ordering key
are handled one after the other, in delivery order; other keys concurrently.

Each delivery joins the chain of its key (a future per delivery, the key's tail) the
moment it arrives, before anything is awaited, so the chain follows the queue's order.
It starts once the previous delivery of its key is settled (acked or dead-lettered) and a
concurrency slot, shared by all the partitions of the service in this process, is free.
The key is read from the raw JSON body (``str()`` of the ``key=`` field); an event without
one, or a body that cannot be read, has no chain of its own and starts at once.

On a stop, a delivery that has not started is left unsettled: closing the subscription
gives all of them back to the queue together, in their order, before another process's
consumer becomes the partition's active one. A handler that still fails when the worker
stops is given back the same way (its next attempt starts again at 1), never through a
retry queue, which would put it behind later events of its key.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from ..transports.base import Delivery
from .dispatch import EventWorker
from .settle import RetryLater

__all__ = ["PartitionWorker"]


class PartitionWorker(EventWorker):
    """Consumes one partition queue; ``slots`` is shared by the service's partitions."""

    cancel_first = False  # keep the subscription (and the partition) until the close

    def __init__(self, *args: Any, slots: asyncio.Semaphore, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = slots
        self._tails: dict[str, asyncio.Future[None]] = {}

    def _ordering_key(self, delivery: Delivery) -> str | None:
        handler = self._handler_for(delivery)
        field = None if handler is None else handler.event_type.__event_key__
        if field is None:
            return None
        try:
            body = json.loads(delivery.message.body)
        except (ValueError, RecursionError):  # dispatch dead-letters it, with the reason
            return None
        return str(body.get(field)) if isinstance(body, dict) else None

    async def on_message(self, delivery: Delivery) -> None:
        key = self._ordering_key(delivery)
        previous = None if key is None else self._tails.get(key)
        mine: asyncio.Future[None] | None = None
        if key is not None:
            mine = self._tails[key] = asyncio.get_running_loop().create_future()
        task = asyncio.current_task()
        if task is not None:
            if not self.tasks:
                self._progress = time.perf_counter()
            self.tasks.add(task)
        try:
            if previous is not None and not previous.done():
                await asyncio.wait((previous,))  # never cancels the previous one's future
            if self.stopping:
                return  # unsettled: the close gives it back, in order
            async with self._slots:
                if self.stopping:
                    return
                started = time.perf_counter()
                verdict, event_name, attempt = await self._process(delivery)
                if isinstance(verdict, RetryLater):  # only when stopping: see above
                    return
                outcome = await self.settler.settle(delivery, verdict)
                self._report(delivery, outcome, event_name, attempt, started)
        finally:
            if mine is not None:
                if not mine.done():
                    mine.set_result(None)
                if self._tails.get(key or "") is mine:
                    del self._tails[key or ""]
            if task is not None:
                self.tasks.discard(task)
