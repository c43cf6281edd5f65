"""Who else runs a partitioned service: each process announces itself on the service's
presence exchange and listens on a queue of its own.

Every ``interval`` s a process publishes a heartbeat, ``{"node": ..., "partitions": N}``,
to the fanout exchange ``<service>.presence`` (``topology.presence_exchange_name``); each
process's queue (``topology.presence_queue``) receives every heartbeat, its own included.
A process not heard from for ``EXPIRY`` intervals is gone (a kill -9, a lost network);
one that stops says ``"leaving": true`` and is gone at once. A process hearing a new one
answers with a heartbeat at once, so a process that joins learns its peers in one round
trip. The view is what :class:`balance.Balancer` divides the partitions by.

Heartbeats are transient (not persisted) and expire in the queue after ``EXPIRY``
intervals, so a process reconnecting never reads stale ones as news. Nothing here is
needed for correctness: a partition queue's single-active-consumer flag keeps it to one
consumer whatever the views say; presence only spreads the partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable

from .. import topology
from ..errors import ChoreoError
from ..transports.base import FANOUT, Consumer, Delivery, Message, QueueSpec, Transport

__all__ = ["EXPIRY", "Presence"]

log = logging.getLogger("choreo.partitions")

EXPIRY = 3  # heartbeats missed before a process is taken for gone
PRESENCE_TYPE = "choreo.presence"  # the message type of a heartbeat


def node_id() -> str:
    """This process, as its peers see it: host, pid, and a random part for restarts."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class Presence:
    """The live processes of one partitioned service, as this one hears them."""

    def __init__(
        self,
        transport: Transport,
        declare_queue: Callable[[QueueSpec], Awaitable[None]],
        namespace: str,
        service: str,
        partitions: int,
        interval: float,
    ) -> None:
        self.node = node_id()
        self._transport = transport
        self._service = service
        self._partitions = partitions
        self.interval = interval
        self._exchange = topology.presence_exchange_name(namespace, service)
        self._spec = topology.presence_queue(namespace, service, self.node, interval * EXPIRY)
        self._declare_queue = declare_queue
        self._seen: dict[str, float] = {}  # peer -> when last heard (monotonic)
        self._changed = asyncio.Event()
        self._consumer: Consumer | None = None
        self._beating: asyncio.Task[None] | None = None
        self._warned: set[str] = set()
        self._failing = False

    @property
    def members(self) -> tuple[str, ...]:
        """The live processes, this one included, sorted (the same order everywhere)."""
        return tuple(sorted({self.node, *self._seen}))

    async def changed(self) -> None:
        """Wait until the view changes (a process joined, left or went silent)."""
        await self._changed.wait()
        self._changed.clear()

    async def start(self) -> None:
        """Declare the exchange and this process's queue, listen, and announce it."""
        await self._transport.declare_exchange(self._exchange, FANOUT)
        await self._declare()
        self._consumer = await self._transport.consume(
            self._spec.name, self._on_message, 64, self._restore
        )
        await self._announce()
        self._beating = asyncio.get_running_loop().create_task(self._beat())

    async def _declare(self) -> None:
        await self._declare_queue(self._spec)

    async def _restore(self) -> None:
        """The presence queue was deleted (expired while disconnected): declare it again."""
        with contextlib.suppress(ChoreoError):
            await self._declare()
            if self._consumer is not None:
                await self._consumer.resume()

    async def stop(self) -> None:
        """Say this process leaves (its peers take its partitions over at once) and stop."""
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
        await self._announce(leaving=True)
        if self._consumer is not None:
            with contextlib.suppress(ChoreoError):
                await self._consumer.close()
        with contextlib.suppress(ChoreoError):
            await self._transport.delete_queue(self._spec.name)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._announce()
            cutoff = time.monotonic() - self.interval * EXPIRY
            gone = [peer for peer, seen in self._seen.items() if seen < cutoff]
            for peer in gone:
                del self._seen[peer]
                log.warning("%s: process %s went silent", self._service, peer)
            if gone:
                self._changed.set()

    async def _announce(self, *, leaving: bool = False) -> None:
        body = {"node": self.node, "partitions": self._partitions}
        if leaving:
            body["leaving"] = True
        message = Message(
            json.dumps(body).encode(),
            type=PRESENCE_TYPE,
            content_type="application/json",
            expiration=self.interval * EXPIRY,
            persistent=False,
        )
        try:
            await self._transport.publish(message, self._exchange)
        except ChoreoError as exc:  # the connection is down: the next beat tries again
            if not self._failing:
                log.warning("%s: cannot announce this process: %s", self._service, exc)
            self._failing = True
        else:
            self._failing = False

    async def _on_message(self, delivery: Delivery) -> None:
        try:
            body = json.loads(delivery.message.body)
            peer = body["node"] if isinstance(body, dict) else None
        except (ValueError, KeyError, RecursionError):
            peer = None
        await delivery.ack()
        if not isinstance(peer, str) or peer == self.node:
            return
        if body.get("leaving"):
            if self._seen.pop(peer, None) is not None:
                log.info("%s: process %s left", self._service, peer)
                self._changed.set()
            return
        count = body.get("partitions")
        if count != self._partitions and peer not in self._warned:
            self._warned.add(peer)
            log.warning(
                "%s: process %s has %s partitions, this one %d: run `choreo topology --apply` "
                "and restart the processes with one count",
                self._service, peer, count, self._partitions,
            )  # fmt: skip
        new = peer not in self._seen
        self._seen[peer] = time.monotonic()
        if new:
            log.info("%s: process %s joined", self._service, peer)
            self._changed.set()
            await self._announce()  # so that a process joining learns of this one at once
