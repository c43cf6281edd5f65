"""Crash loops: a message that takes its worker down (``os._exit``, an OOM kill, a
segfault) must not be redelivered at the head of its queue forever.

A delivery that comes back ``redelivered`` may have killed its worker, or may only have
been prefetched beside the one that did. So it is not run with the rest: it is moved
(a confirmed copy, then the ack) to the service's quarantine queue ``<queue>.suspect``.
The worker then pauses its own subscription, lets its handlers in flight finish, and
takes the suspects one at a time (``basic.get``), each handled alone. A suspect that
comes back redelivered from there was the only message the worker held when it died:
its ``x-choreo-crashes`` count goes up by one, and once its worker died
``delivery_limit`` times in all (the first time in the service queue) it is
dead-lettered with a reason that says so. Innocent neighbours are never counted: they
were not running alone when a worker died. Then the subscription resumes.

A message this process handed back on purpose (a dead letter that could not be stored,
say) is not a suspect: its id is remembered, in a bounded set.

A partition queue (``partitions.PartitionWorker``) keeps its subscription (``pausing``
false: cancelling it would make another process the partition's consumer); its worker
holds every later delivery back until the quarantine is empty (``cleared``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Protocol

from ..errors import ChoreoError
from ..observability.observer import Outcome
from ..transports.base import Consumer, Delivery, Transport
from ..wire import crashes_of
from .settle import Quarantine

__all__ = ["Suspects"]

log = logging.getLogger("choreo.suspects")

POLL = 5.0  # seconds between looks at the quarantine queue when nothing calls for one
REMEMBERED = 10_000  # ids of messages handed back on purpose


class Alone(Protocol):
    """What the quarantine needs of its worker."""

    stopping: bool

    async def idle(self) -> None:
        """Return once no handler of the worker is in flight."""

    async def handle_alone(self, delivery: Delivery) -> Outcome:
        """Handle and settle ``delivery`` with nothing else running."""

    async def crashed(self, delivery: Delivery, crashes: int, limit: int) -> Outcome:
        """``delivery`` killed its worker ``crashes`` times alone: quarantine it again, or
        dead-letter it once the limit is reached."""

    def cleared(self) -> None:
        """The quarantine queue was found empty."""


class Suspects:
    """The quarantine of one service queue."""

    def __init__(
        self, transport: Transport, queue: str, limit: int, *, pausing: bool = True
    ) -> None:
        self.queue = queue
        self._pausing = pausing
        self.limit = limit
        self.verdict = Quarantine(queue)
        self._transport = transport
        self._handed_back: OrderedDict[str, None] = OrderedDict()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def is_suspect(self, delivery: Delivery) -> bool:
        """Whether a redelivered ``delivery`` goes to quarantine (and a look is due)."""
        message_id = delivery.message.message_id
        if message_id is not None and message_id in self._handed_back:
            del self._handed_back[message_id]
            return False
        self._wake.set()
        return True

    def wake(self) -> None:
        """Look at the quarantine queue now."""
        self._wake.set()

    def handed_back(self, delivery: Delivery) -> None:
        """This process gave ``delivery`` back to its queue on purpose."""
        message_id = delivery.message.message_id
        if message_id is None:
            return
        self._handed_back[message_id] = None
        self._handed_back.move_to_end(message_id)
        while len(self._handed_back) > REMEMBERED:
            self._handed_back.popitem(last=False)

    def start(self, worker: Alone, subscription: Consumer) -> None:
        """Watch the quarantine queue (now, and on each wake-up) for ``worker``."""
        self._wake.set()  # a worker that died may have left suspects behind
        self._task = asyncio.get_running_loop().create_task(self._watch(worker, subscription))

    def stopping(self) -> set[asyncio.Task[None]]:
        """Wake the watch so it ends after its current step (the worker is stopping); the
        task to wait for, with the handlers. It is not cancelled: a broker call cut short
        costs a channel, and the step it is in takes milliseconds or is a handler."""
        task, self._task = self._task, None
        self._wake.set()
        return set() if task is None or task.done() else {task}

    async def _watch(self, worker: Alone, subscription: Consumer) -> None:
        while not worker.stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await self._wake.wait()
            self._wake.clear()
            try:
                if worker.stopping:
                    break
                if await self._transport.queue_size(self.queue):
                    await self._handle(worker, subscription)
                else:
                    worker.cleared()
            except ChoreoError as exc:  # the broker went away: the next look tries again
                log.warning("quarantine of %s: %s", self.queue, exc)

    async def _handle(self, worker: Alone, subscription: Consumer) -> None:
        if self._pausing:
            await subscription.pause()
        try:
            await worker.idle()
            while not worker.stopping:
                async with self._transport.fetch(self.queue, 1) as taken:
                    if not taken:
                        worker.cleared()
                        return
                    delivery = taken[0]
                    if delivery.redelivered and self.is_suspect(delivery):
                        crashes = crashes_of(delivery.message) + 1
                        await worker.crashed(delivery, crashes, self.limit)
                        continue
                    outcome = await worker.handle_alone(delivery)
                if outcome is Outcome.REQUEUED:
                    return  # handed back on purpose: look again later, not in a tight loop
        finally:
            if self._pausing and not worker.stopping:
                await subscription.resume()
