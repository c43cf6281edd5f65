"""A worker consumes one queue of a service: bounded concurrency, graceful drain, and one
observer call per settled delivery. What handling a delivery means is the subclass's
(``dispatch.EventWorker``, ``responder.RequestWorker``); settling is ``settle.Settler``'s.

A worker is handed what it uses (:class:`Setup`), never the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..context import Context, Publisher, UndeclaredCheck
from ..observability.observer import Observer, Outcome
from ..service import Handler, Service
from ..transports.base import Consumer, Delivery, QueueSpec, Transport
from ..wire import handled_as
from .settle import REQUEUE, GiveUp, Quarantine, Settler, Verdict
from .suspects import Suspects

__all__ = ["HandlerExit", "QueueWorker", "Setup", "call"]

log = logging.getLogger("choreo.worker")

CANCEL_GRACE = 1.0  # seconds a cancelled handler gets to end before it is left behind


@dataclass(frozen=True, slots=True)
class Setup:
    """What the bus hands its workers."""

    transport: Transport
    publisher: Publisher  # what handlers' contexts publish and ask through
    observer: Observer
    declare_queue: Callable[[QueueSpec], Awaitable[None]]
    max_message_size: int


class QueueWorker:
    """Consumes one queue of ``service``; subclasses decide each delivery (``_process``)."""

    cancel_first = True  # a stop cancels the subscription before it waits for handlers

    def __init__(
        self,
        setup: Setup,
        service: Service,
        *,
        queue: str,
        settler: Settler,
        concurrency: int,
        suspects: Suspects | None = None,
    ) -> None:
        self.setup = setup
        self.suspects = suspects
        self.service = service
        self.queue = queue
        self.settler = settler
        self._slots = asyncio.Semaphore(concurrency)
        self._check = UndeclaredCheck(service)
        self.tasks: set[asyncio.Task[object]] = set()
        self.stopping = False
        self._stop_requested = asyncio.Event()
        self._progress = time.perf_counter()  # the last settle, or when work last arrived
        self._observer = setup.observer
        self._service_name = service.name

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the worker starts to stop (retry waits)."""
        if self.stopping:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop_requested.wait()

    async def on_message(self, delivery: Delivery) -> None:
        """Transport callback: one call per delivery, run concurrently."""
        if self.stopping:
            await self.settler.settle(delivery, REQUEUE)
            return
        task = asyncio.current_task()
        if task is not None:
            if not self.tasks:
                self._progress = time.perf_counter()
            self.tasks.add(task)
        try:
            async with self._slots:
                if self.stopping:
                    await self.settler.settle(delivery, REQUEUE)
                    return
                suspects = self.suspects
                if delivery.redelivered and suspects is not None and suspects.is_suspect(delivery):
                    await self._settle(delivery, suspects.verdict, delivery.message.type, 0)
                    return
                # the hot path, kept flat: what _handle() does, without its frame
                started = time.perf_counter()
                verdict, event_name, attempt = await self._process(delivery)
                outcome = await self.settler.settle(delivery, verdict)
                self._report(delivery, outcome, event_name, attempt, started)
        except asyncio.CancelledError:
            await self.settler.settle(delivery, REQUEUE)  # stopped past the timeout
            raise
        finally:
            if task is not None:
                self.tasks.discard(task)

    async def _handle(self, delivery: Delivery) -> Outcome:
        started = time.perf_counter()
        verdict, event_name, attempt = await self._process(delivery)
        return await self._settle(delivery, verdict, event_name, attempt, started)

    async def _settle(
        self,
        delivery: Delivery,
        verdict: Verdict,
        event_name: str | None,
        attempt: int,
        started: float | None = None,
    ) -> Outcome:
        outcome = await self.settler.settle(delivery, verdict)
        self._report(delivery, outcome, event_name, attempt, started)
        return outcome

    def _report(
        self,
        delivery: Delivery,
        outcome: Outcome,
        event_name: str | None,
        attempt: int,
        started: float | None,
    ) -> None:
        """After a settle: progress, handed-back bookkeeping, and the observer."""
        now = time.perf_counter()
        self._progress = now
        if outcome is Outcome.REQUEUED and self.suspects is not None:
            self.suspects.handed_back(delivery)
        message = delivery.message
        self._observer.handled(
            self._service_name,
            event_name,
            outcome,
            0.0 if started is None else now - started,
            attempt,
            message.message_id,
            message.correlation_id,
        )

    def stalled(self, seconds: float) -> bool:
        """Deliveries in hand and none settled for ``seconds``: the worker is stuck."""
        return bool(self.tasks) and time.perf_counter() - self._progress > seconds

    # -- the quarantine's side (see suspects.py) -------------------------------------------

    def attach(self, subscription: Consumer) -> None:
        """The worker consumes through ``subscription`` now; watch its quarantine."""
        if self.suspects is not None:
            self.suspects.start(self, subscription)

    async def idle(self) -> None:
        while self.tasks:
            await asyncio.wait(set(self.tasks))

    def cleared(self) -> None:
        """The quarantine is empty (nothing to do: the subscription resumes)."""

    async def handle_alone(self, delivery: Delivery) -> Outcome:
        """Handle a suspect as a handler task of its own, so that a stop waits for it."""
        task = asyncio.get_running_loop().create_task(self._handle(delivery))
        self.tasks.add(task)
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self.tasks.discard(task)

    async def crashed(self, delivery: Delivery, crashes: int, limit: int) -> Outcome:
        name = delivery.message.type or handled_as(delivery.message) or None
        assert self.suspects is not None
        if crashes + 1 < limit:  # +1: its first death, in the service queue
            log.warning(
                "%s: message %s (%s) was being handled alone when its worker died (%d time(s))",
                self.service.name,
                delivery.message.message_id,
                name,
                crashes,
            )
            return await self._settle(delivery, Quarantine(self.suspects.queue, crashes), name, 0)
        reason = (
            f"its worker died {crashes + 1} times while handling it (delivery limit {limit}): "
            "the handler takes its process down (os._exit, a crash, an OOM kill, a signal)"
        )
        verdict = GiveUp("KilledItsWorker", reason, crashes + 1, name)
        return await self._settle(delivery, verdict, name, crashes + 1)

    async def drain(self, timeout: float, abort: asyncio.Event | None = None) -> bool:
        """Wait up to ``timeout`` s (or until ``abort`` is set) for handlers in flight, then
        cancel those left; a handler that ignores its cancellation is given up on after
        ``CANCEL_GRACE`` s (its message returns to the queue when the connection closes).
        True if no handler had to be cancelled."""
        self.stopping = True
        self._stop_requested.set()
        watch = set() if self.suspects is None else self.suspects.stopping()
        pending: set[asyncio.Task[Any]] = set(self.tasks) | watch
        if not pending:
            return True
        finished = asyncio.ensure_future(asyncio.wait(pending))
        waits: set[asyncio.Future[Any]] = {finished}
        if abort is not None:
            waits.add(asyncio.ensure_future(abort.wait()))
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        late = {task for task in pending if not task.done()}
        for task in late:
            task.cancel()
        late -= watch
        if not late:
            return True
        _, stuck = await asyncio.wait(late, timeout=CANCEL_GRACE)
        aborted = abort is not None and abort.is_set()
        log.warning(
            "%s: %d handler(s) %s; their messages go back to the queue%s",
            self.service.name,
            len(late),
            "aborted" if aborted else f"still running after {timeout:.1f}s were cancelled",
            f" ({len(stuck)} ignore their cancellation and are left behind)" if stuck else "",
        )
        return False

    async def _process(self, delivery: Delivery) -> tuple[Verdict, str | None, int]:
        """Handle ``delivery``; return (verdict, event name, last attempt)."""
        raise NotImplementedError

    def _context(self, handler: Handler, delivery: Delivery, attempt: int = 1) -> Context:
        message = delivery.message
        return Context(
            self.setup.publisher,
            service=self.service.name,
            event_name=handler.event_name,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            headers=message.headers,
            attempt=attempt,
            check=self._check,
        )


class HandlerExit(Exception):
    """A handler raised ``SystemExit``, ``KeyboardInterrupt`` or a ``CancelledError`` that
    is not choreo's own shutdown: a handler failure like any other (retried, then
    dead-lettered), never the end of the worker."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"the handler raised {type(original).__name__}({original})")
        self.original = original


async def call(handler: Handler, event: object, ctx: Context) -> object:
    """Run ``handler`` with the event, and the context when it takes one."""
    try:
        if handler.takes_context:
            return await handler.func(event, ctx)
        return await handler.func(event)
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # choreo cancels it: shutdown past timeout
            raise
        raise HandlerExit(exc) from exc
    except (SystemExit, KeyboardInterrupt) as exc:
        raise HandlerExit(exc) from exc
