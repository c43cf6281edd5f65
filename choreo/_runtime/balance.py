"""Which partitions of a partitioned service this process consumes.

Every process computes the same assignment from the same view of the live processes
(:class:`presence.Presence`): :func:`assign`, rendezvous hashing with bounded load. Each
partition goes to the process that scores highest for it (a hash of process and
partition) among those not yet holding ``ceil(N / processes)``, so the partitions are
spread evenly and a process joining or leaving moves few of them. A process subscribes to
the partitions assigned to it and gives up the others: it stops taking their deliveries,
lets their handlers finish and closes the subscription, which hands what it had not
started back to the queue, in order, for the next owner.

Views differ for a moment while processes join and leave; nothing depends on them
agreeing. A partition queue has ``x-single-active-consumer``: a process subscribing to a
partition another still holds waits as the standby and becomes the active consumer when
the other lets go. The worst a disagreement does is leave a partition unconsumed until
the views agree again (one heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from ..errors import ChoreoError
from .presence import Presence

__all__ = ["Balancer", "assign"]

log = logging.getLogger("choreo.partitions")

JOIN_WAIT = 0.3  # seconds a starting process listens for its peers before it takes partitions

T = TypeVar("T")


def _score(member: str, partition: int) -> int:
    digest = hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign(members: Sequence[str], partitions: int) -> dict[str, list[int]]:
    """The partitions ``0..partitions-1`` of each of ``members`` (the same for any order of
    ``members``): at most ``ceil(partitions / len(members))`` each."""
    names = sorted(set(members))
    if not names:
        return {}
    cap = -(-partitions // len(names))
    held: dict[str, list[int]] = {name: [] for name in names}
    for partition in range(partitions):
        ranked = sorted(names, key=lambda name: (_score(name, partition), name), reverse=True)
        owner = next(name for name in ranked if len(held[name]) < cap)
        held[owner].append(partition)
    return held


class Balancer(Generic[T]):
    """Holds this process's share of the ``partitions`` of ``service``: ``start(p)``
    subscribes to partition ``p`` and returns what ``stop`` later lets go of."""

    def __init__(
        self,
        service: str,
        partitions: int,
        presence: Presence,
        start: Callable[[int], Awaitable[T]],
        stop: Callable[[T], Awaitable[None]],
    ) -> None:
        self._service = service
        self._partitions = partitions
        self.presence = presence
        self._start = start
        self._stop = stop
        self.held: dict[int, T] = {}
        self._moves: dict[int, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._shown: tuple[tuple[int, ...], int] | None = None

    async def start(self) -> None:
        """Announce this process, hear its peers, take its share and follow the view."""
        await self.presence.start()
        await asyncio.sleep(min(JOIN_WAIT, self.presence.interval))
        self._reconcile()
        self._loop = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:  # on every change of the view, and every heartbeat to mend failures
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.presence.interval):
                    await self.presence.changed()
            self._reconcile()

    def _reconcile(self) -> None:
        members = self.presence.members
        wanted = set(assign(members, self._partitions).get(self.presence.node, ()))
        for partition in range(self._partitions):
            if partition in self._moves:
                continue  # the next round looks at it again
            if partition in wanted and partition not in self.held:
                self._move(partition, self._take(partition))
            elif partition not in wanted and partition in self.held:
                self._move(partition, self._give_up(partition))
        shown = (tuple(sorted(wanted)), len(members))
        if shown != self._shown:
            self._shown = shown
            log.info(
                "%s: this process (%s) takes partitions %s of %d (%d process(es))",
                self._service,
                self.presence.node,
                ", ".join(map(str, shown[0])) or "none",
                self._partitions,
                len(members),
            )

    def _move(self, partition: int, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            finally:
                self._moves.pop(partition, None)

        self._moves[partition] = asyncio.get_running_loop().create_task(run())

    async def _take(self, partition: int) -> None:
        try:
            self.held[partition] = await self._start(partition)
        except ChoreoError as exc:  # the next round tries again
            log.warning("%s: cannot take partition %d: %s", self._service, partition, exc)

    async def _give_up(self, partition: int) -> None:
        held = self.held.pop(partition)
        await self._stop(held)

    async def stop(self) -> list[T]:
        """Stop following the view, tell the peers this process leaves, and return what it
        still holds (for the caller to stop with its other workers)."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        await self.presence.stop()
        while self._moves:
            await asyncio.wait(set(self._moves.values()))
        held, self.held = list(self.held.values()), {}
        return held
