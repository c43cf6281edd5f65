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

Crash loops (``suspects.py``): a delivery that comes back ``redelivered`` (its process died,
or stopped, holding it) moves, in its key's turn, to the partition's quarantine queue
``<partition>.suspect``, and every later delivery of the partition waits until the
quarantine is empty: its messages are handled alone, one at a time, in their order. One
that kills its worker there goes back to the end of the quarantine with one more crash,
and the messages that were behind it are moved behind it again, so its key's order holds;
after ``delivery_limit`` deaths it is dead-lettered and the partition moves on. Moving the
neighbours also resets the delivery count a quorum queue keeps, so they never reach the
queue's delivery limit for a crash that was not theirs. Only the partition's active
consumer touches its quarantine: a worker starts watching it with its first delivery (a
standby gets none) or once it is the queue's only consumer (what a dead owner left there,
with nothing new in the partition).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from ..errors import ChoreoError
from ..observability.observer import Outcome
from ..transports.base import Consumer, Delivery
from ..wire import crashes_of
from .dispatch import EventWorker
from .settle import REQUEUE, Quarantine, RetryLater

__all__ = ["PartitionWorker"]

log = logging.getLogger("choreo.partitions")

ACTIVE_POLL = 1.0  # seconds between looks at whether a partition's standby is active now


class PartitionWorker(EventWorker):
    """Consumes one partition queue; ``slots`` is shared by the service's partitions."""

    cancel_first = False  # keep the subscription (and the partition) until the close

    def __init__(self, *args: Any, slots: asyncio.Semaphore, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = slots
        self._tails: dict[str, asyncio.Future[None]] = {}
        # set: nothing in quarantine, nothing on its way there; not before the first look
        # (another process may have left messages in quarantine when it let go)
        self._clear = asyncio.Event()
        self._moving = 0  # suspects received and not yet in quarantine
        self._running: set[asyncio.Task[object]] = set()  # handlers started (not held back)
        self._subscription: Consumer | None = None  # its quarantine is watched once active
        self._probe: asyncio.Task[None] | None = None

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

    def attach(self, subscription: Consumer) -> None:
        """Not yet: only the partition's active consumer may touch its quarantine. A
        subscription is the active one once a delivery arrives, or while it is the queue's
        only consumer; until then it looks every ``ACTIVE_POLL`` s."""
        self._subscription = subscription
        self._probe = asyncio.get_running_loop().create_task(self._until_active())

    def _active(self) -> None:
        if self._subscription is not None:  # active now, until the subscription closes
            subscription, self._subscription = self._subscription, None
            super().attach(subscription)  # looks at the quarantine before anything starts

    async def _until_active(self) -> None:
        while self._subscription is not None and not self.stopping:
            try:
                if await self.setup.transport.consumer_count(self.queue) == 1:
                    self._active()  # the only consumer of a single-active-consumer queue
                    return
            except ChoreoError as exc:  # the next look tries again
                log.debug("%s: %s", self.queue, exc)
            await self.pause(ACTIVE_POLL)

    async def on_message(self, delivery: Delivery) -> None:
        self._active()
        key = self._ordering_key(delivery)
        previous = None if key is None else self._tails.get(key)
        mine: asyncio.Future[None] | None = None
        if key is not None:
            mine = self._tails[key] = asyncio.get_running_loop().create_future()
        suspects = self.suspects
        suspect = delivery.redelivered and suspects is not None and suspects.is_suspect(delivery)
        if suspect:  # before anything is awaited: every later delivery waits for it
            self._moving += 1
            self._clear.clear()
        task = asyncio.current_task()
        if task is not None:
            if not self.tasks:
                self._progress = time.perf_counter()
            self.tasks.add(task)
        try:
            if previous is not None and not previous.done():
                await asyncio.wait((previous,))  # never cancels the previous one's future
            if suspect:
                await self._to_quarantine(delivery)
                return
            if not self._clear.is_set():
                await self._clear.wait()
            if self.stopping:
                return  # unsettled: the close gives it back, in order
            async with self._slots:
                if self.stopping:
                    return
                if task is not None:
                    self._running.add(task)
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
                self._running.discard(task)

    async def _to_quarantine(self, delivery: Delivery) -> None:
        assert self.suspects is not None
        try:
            if not self.stopping:  # stopping: unsettled, the close gives it back in order
                await self._settle(delivery, self.suspects.verdict, delivery.message.type, 0)
        finally:
            self._moving -= 1
            self.suspects.wake()

    # -- the quarantine's side (see suspects.py) -------------------------------------------

    async def idle(self) -> None:
        """Handlers started; the deliveries held back for the quarantine do not count."""
        while self._running:
            await asyncio.wait(set(self._running))

    def cleared(self) -> None:
        if not self._moving:
            self._clear.set()

    async def _handle(self, delivery: Delivery) -> Outcome:
        started = time.perf_counter()
        verdict, event_name, attempt = await self._process(delivery)
        if isinstance(verdict, RetryLater):  # stopping: back to the head of the quarantine
            verdict = REQUEUE
        return await self._settle(delivery, verdict, event_name, attempt, started)

    async def crashed(self, delivery: Delivery, crashes: int, limit: int) -> Outcome:
        """Quarantined again (at the end of its queue): the messages behind it are moved
        behind it again, in their order; or dead-lettered."""
        assert self.suspects is not None
        queue, transport = self.suspects.queue, self.setup.transport
        behind = await transport.queue_size(queue)
        outcome = await super().crashed(delivery, crashes, limit)
        if outcome is Outcome.QUARANTINED:
            for _ in range(behind):
                async with transport.fetch(queue, 1) as taken:
                    if not taken:
                        break
                    verdict = Quarantine(queue, crashes_of(taken[0].message))
                    await self.settler.settle(taken[0], verdict)
        return outcome

    async def drain(self, timeout: float, abort: asyncio.Event | None = None) -> bool:
        self.stopping = True
        self._clear.set()  # what waits for the quarantine is left unsettled: given back
        return await super().drain(timeout, abort)
