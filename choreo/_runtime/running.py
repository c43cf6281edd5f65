"""The services a bus consumes for: one worker per queue (events, requests), its
subscription, and a graceful stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from .. import topology
from ..errors import ChoreoError, ConnectionFailed
from ..retry import Retry
from ..service import Service
from ..transports.base import Consumer
from .balance import Balancer
from .broker_retry import BrokerRetry
from .dispatch import EventWorker
from .partitions import PartitionWorker
from .presence import Presence
from .responder import RequestWorker
from .settle import Settler
from .suspects import Suspects
from .worker import QueueWorker, Setup

__all__ = ["Running"]

log = logging.getLogger("choreo")

RESTORE_ATTEMPTS = 5
RESTORE_BACKOFF = 1.0  # seconds between attempts to restore a deleted queue


class Stalls(Protocol):
    @property
    def stall_timeout(self) -> float: ...


@dataclass(slots=True)
class _Subscribed:
    worker: QueueWorker
    subscription: Consumer | None


class Running:
    """The workers of the running services; ``prefetch``, ``concurrency``, ``retry`` and
    ``queue_type`` are the defaults of services that do not set their own."""

    def __init__(
        self,
        setup: Setup,
        namespace: str,
        redeclare: Callable[[Service], Awaitable[object]],
        *,
        prefetch: int,
        concurrency: int,
        retry: Retry,
        queue_type: str,
        delivery_limit: int,
        shutdown_timeout: float,
        heartbeat: float,
    ) -> None:
        self._setup = setup
        self._shutdown_timeout = shutdown_timeout  # what a partition let go of gets to finish
        self._heartbeat = heartbeat  # seconds between a partitioned service's announcements
        self._balancers: dict[str, Balancer[_Subscribed]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._namespace = namespace
        self._prefetch = prefetch
        self._concurrency = concurrency
        self._retry = retry
        self._queue_type = queue_type
        self._delivery_limit = delivery_limit
        self._services: dict[str, list[_Subscribed]] = {}
        self._redeclare = redeclare
        self.failed: asyncio.Future[None] | None = None  # set when a queue cannot be restored

    def __contains__(self, service: str) -> bool:
        return service in self._services

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._services)

    def _workers(self, service: Service) -> list[QueueWorker]:
        setup, namespace = self._setup, self._namespace
        transport = setup.transport
        concurrency = service.concurrency or self._concurrency
        dlq = topology.dlq_name(namespace, service.name)
        workers: list[QueueWorker] = []
        if service.handlers and not service.partitions:
            queue = topology.queue_name(namespace, service.name)
            queue_type = service.queue_type or self._queue_type
            retries = BrokerRetry(transport, queue, queue_type, setup.declare_queue)
            limit = service.delivery_limit or self._delivery_limit
            workers.append(
                EventWorker(
                    setup,
                    service,
                    queue=queue,
                    settler=Settler(transport, service=service.name, dlq=dlq, retry=retries),
                    exchanges={
                        topology.exchange_name(namespace, name): handler
                        for name, handler in service.handlers.items()
                    },
                    concurrency=concurrency,
                    retry=service.retry or self._retry,
                    suspects=Suspects(transport, topology.suspect_queue_name(queue), limit),
                    handback_limit=limit,
                )
            )
        if service.responders:
            workers.append(
                RequestWorker(
                    setup,
                    service,
                    queue=topology.requests_queue_name(namespace, service.name),
                    settler=Settler(transport, service=service.name, dlq=dlq),
                    concurrency=concurrency,
                )
            )
        return workers

    def _partition_worker(self, service: Service, partition: int) -> PartitionWorker:
        """The worker of one partition queue; one concurrency bound for all of them."""
        setup, namespace = self._setup, self._namespace
        concurrency = service.concurrency or self._concurrency
        slots = self._slots.setdefault(service.name, asyncio.Semaphore(concurrency))
        queue = topology.partition_queue_name(namespace, service.name, partition)
        queue_type = service.queue_type or self._queue_type
        retries = BrokerRetry(setup.transport, queue, queue_type, setup.declare_queue)
        dlq = topology.dlq_name(namespace, service.name)
        limit = service.delivery_limit or self._delivery_limit
        suspects = Suspects(
            setup.transport, topology.suspect_queue_name(queue), limit, pausing=False
        )
        return PartitionWorker(
            setup,
            service,
            queue=queue,
            settler=Settler(setup.transport, service=service.name, dlq=dlq, retry=retries),
            exchanges={
                topology.exchange_name(namespace, name): handler
                for name, handler in service.handlers.items()
            },
            concurrency=concurrency,
            retry=service.retry or self._retry,
            suspects=suspects,
            handback_limit=limit,
            slots=slots,
        )

    async def start(self, service: Service) -> None:
        """Consume the queues of ``service`` (declared already); a partitioned service's
        partitions are shared with its other processes (``balance.Balancer``)."""
        if self.failed is None:
            self.failed = asyncio.get_running_loop().create_future()
        subscribed = self._services[service.name] = []
        for worker in self._workers(service):
            subscribed.append(await self._subscribe(service, worker))
        if service.handlers and service.partitions:
            await self._balance(service, subscribed)

    async def _subscribe(self, service: Service, worker: QueueWorker) -> _Subscribed:
        prefetch = service.prefetch or self._prefetch
        entry = _Subscribed(worker, None)

        async def restore() -> None:
            await self._restore(service, entry)

        entry.subscription = await self._setup.transport.consume(
            worker.queue, worker.on_message, prefetch, restore
        )
        worker.attach(entry.subscription)
        log.info("service %s consuming %s (prefetch %d)", service.name, worker.queue, prefetch)
        return entry

    async def _balance(self, service: Service, subscribed: list[_Subscribed]) -> None:
        """Take this process's share of the partitions of ``service``, follow its peers."""
        count = service.partitions or 1

        async def take(partition: int) -> _Subscribed:
            entry = await self._subscribe(service, self._partition_worker(service, partition))
            subscribed.append(entry)
            return entry

        async def give_up(entry: _Subscribed) -> None:
            await entry.worker.drain(self._shutdown_timeout)
            if entry.subscription is not None:
                await entry.subscription.close()
            subscribed.remove(entry)
            log.info("service %s let go of %s", service.name, entry.worker.queue)

        setup = self._setup
        presence = Presence(
            setup.transport, setup.declare_queue, self._namespace, service.name, count,
            self._heartbeat,
        )  # fmt: skip
        balancer = self._balancers[service.name] = Balancer(
            service.name, count, presence, take, give_up
        )
        await balancer.start()

    async def _restore(self, service: Service, entry: _Subscribed) -> None:
        """The broker cancelled a subscription (its queue was deleted): declare the
        service's topology again and resume; after RESTORE_ATTEMPTS failures, fail the run."""
        queue = entry.worker.queue
        for attempt in range(1, RESTORE_ATTEMPTS + 1):
            if entry.worker.stopping or entry.subscription is None:
                return
            try:
                await self._redeclare(service)
                await entry.subscription.resume()
            except ChoreoError as exc:
                log.error(
                    "%s: cannot restore %s (attempt %d/%d): %s",
                    service.name, queue, attempt, RESTORE_ATTEMPTS, exc,
                )  # fmt: skip
                problem: ChoreoError = exc
                await asyncio.sleep(RESTORE_BACKOFF)
                continue
            log.warning("%s: %s was deleted; declared it again and consuming", service.name, queue)
            return
        if self.failed is not None and not self.failed.done():
            self.failed.set_exception(
                ConnectionFailed(f"queue {queue!r} was deleted and cannot be restored: {problem}")
            )

    async def stop(self, timeout: float, abort: asyncio.Event | None = None) -> None:
        """Stop consuming, let handlers in flight finish (up to ``timeout`` s), then settle."""
        balancers, self._balancers = self._balancers, {}
        for balancer in balancers.values():  # what it still holds is stopped below
            await balancer.stop()
        self._slots.clear()
        services, self._services = self._services, {}
        if not services:
            return
        items = [item for items in services.values() for item in items]
        for item in items:  # a partition is kept until its deliveries go back (close)
            if item.subscription is not None and item.worker.cancel_first:
                await item.subscription.cancel()
        results = await asyncio.gather(*(item.worker.drain(timeout, abort) for item in items))
        for item in items:
            if item.subscription is not None:
                await item.subscription.close()
        log.info(
            "stopped %s%s",
            ", ".join(services),
            "" if all(results) else " (some handlers were cancelled)",
        )

    def healthy(self, settings: Stalls) -> bool:
        """Consuming, no queue lost for good, no worker stalled."""
        failed = self.failed
        return (
            bool(self._services)
            and not (failed is not None and failed.done())
            and not self.stalled(settings.stall_timeout)
        )

    def stalled(self, seconds: float) -> list[str]:
        """The queues whose worker holds deliveries and settled none for ``seconds``."""
        return [
            item.worker.queue
            for items in self._services.values()
            for item in items
            if item.worker.stalled(seconds)
        ]

    def partitions_held(self, service: str) -> tuple[int, ...]:
        """The partitions of ``service`` this process consumes now (it may be the standby)."""
        balancer = self._balancers.get(service)
        return () if balancer is None else tuple(sorted(balancer.held))

    def in_flight_of(self, service: str) -> int:
        """Deliveries of ``service`` being handled (or waiting for a slot) right now."""
        return sum(len(item.worker.tasks) for item in self._services.get(service, ()))

    @property
    def in_flight(self) -> int:
        return sum(self.in_flight_of(service) for service in self._services)
