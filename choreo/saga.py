"""``Saga``: a service that remembers, per key, where a business transaction stands.

::

    checkout = Saga("checkout", state=Checkout, key="order_id", store=store)  # Checkout: pydantic

    @checkout.starts(OrderPlaced)              # creates the instance of event.order_id
    async def placed(event: OrderPlaced, saga: SagaContext[Checkout]) -> None:
        await saga.publish(ReserveStock(order_id=event.order_id, sku=event.sku))
        saga.state.timeout = await saga.schedule(CheckoutExpired(...), timedelta(minutes=15))

    @checkout.on(PaymentFailed)
    async def failed(event: PaymentFailed, saga: SagaContext[Checkout]) -> None:
        saga.state.status = "cancelled"
        await saga.publish(ReleaseStock(order_id=event.order_id))   # compensation
        saga.complete()                        # later events of the instance are ignored

A saga is a ``Service`` with a store (``choreo run``, topology, graph see a service). Each
of its handlers is registered as an ordinary handler wrapped by the saga, so it runs in
the store transaction of its delivery, with its inbox and outbox: the wrapper loads the
instance (by the event's ``key`` field) through ``ctx.session``, runs the function with a
:class:`SagaContext`, and saves the state in the same transaction. What the instance
looked like, the message it consumed and what it published commit together or not at
all. The rows, and how concurrent events of one instance are kept apart, are in
``choreo/sql/sagas.py`` (imported when a saga is made: the ``sql`` extra).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from . import wire
from .context import Context
from .errors import ConfigurationError, Reject
from .events import Event, event_name_of, ordering_key_of
from .observability import tracing
from .retry import Retry
from .service import EventTypes, F, Handler, HandlerFunc, Service
from .storage import Skipped

if TYPE_CHECKING:
    from .sql.sagas import SagaRows

__all__ = ["COMPLETED", "ON_MISSING", "RUNNING", "Saga", "SagaContext", "SagaInstance", "SagaStep"]

log = logging.getLogger("choreo.saga")

S = TypeVar("S", bound=BaseModel)

RUNNING, COMPLETED = "running", "completed"  # the status of an instance
ON_MISSING = ("ignore", "dead-letter")  # what becomes of an event for no instance


class SagaContext(Generic[S]):
    """What a saga's handler works with: the instance's ``state`` (saved after the handler,
    in its transaction), its ``key``, and ``ctx``, the handler's ``Context``."""

    __slots__ = ("_completed", "_rows", "_state", "ctx", "key", "saga", "version")

    def __init__(
        self, saga: str, key: str, state: S, version: int, ctx: Context, rows: SagaRows
    ) -> None:
        self.saga = saga
        self.key = key
        self.version = version  # the version read: events applied before this one
        self.ctx = ctx
        self._state = state
        self._rows = rows
        self._completed = False

    def __repr__(self) -> str:
        return f"SagaContext({self.saga!r}, key={self.key!r}, version={self.version})"

    @property
    def state(self) -> S:
        """The instance's state; change it, or set a new one of the same type."""
        return self._state

    @state.setter
    def state(self, value: S) -> None:
        if type(value) is not type(self._state):
            raise TypeError(
                f"saga {self.saga!r}: state must be a {type(self._state).__name__}, "
                f"not {type(value).__name__}"
            )
        self._state = value

    @property
    def completed(self) -> bool:
        return self._completed

    def complete(self) -> None:
        """The instance is finished: later events for it (timeouts included) are ignored."""
        self._completed = True

    async def publish(
        self,
        event: Event,
        *,
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Stage ``event`` in the outbox, in the handler's transaction (``ctx.publish``)."""
        return await self.ctx.publish(event, correlation_id=correlation_id, headers=headers)

    async def schedule(
        self,
        event: Event,
        delay: timedelta | float,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Stage ``event`` to be published ``delay`` (a ``timedelta`` or seconds) from now,
        in the handler's transaction; returns its message id, for :meth:`cancel`. It goes
        to every service bound to it, the saga included (a timeout): an instance that is
        completed by then ignores it."""
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ConfigurationError(f"saga.schedule: the delay cannot be negative ({delay!r})")
        ctx = self.ctx
        ctx._check_declared("emits", event)
        message = wire.encode(
            event,
            correlation_id=ctx.correlation_id,
            causation_id=ctx.message_id,
            headers={wire.SOURCE_HEADER: ctx.service, **(headers or {})},
        )
        if tracing.ENABLED:
            tracing.inject(message.headers)
        await self._rows.schedule(ctx.session, message, seconds, ordering_key_of(event))
        return message.message_id  # type: ignore[return-value]  # wire always sets it

    async def cancel(self, message_id: str) -> bool:
        """Cancel what :meth:`schedule` staged, in the handler's transaction: True if it
        will not be published; False if it was published already, or is being published
        right now (then it arrives: a saga tolerates a late timeout)."""
        return await self._rows.cancel(self.ctx.session, message_id)


@dataclass(frozen=True, slots=True)
class SagaStep:
    """One event applied to an instance (``choreo saga show``)."""

    version: int  # the version it made
    event: str
    message_id: str | None
    status: str  # the instance's status after it
    handled_at: datetime  # naive UTC


@dataclass(frozen=True, slots=True)
class SagaInstance(Generic[S]):
    """An instance as stored: its state, status and version, and (from ``Saga.instance``)
    its history, oldest first."""

    saga: str
    key: str
    state: S
    status: str
    version: int
    created_at: datetime  # naive UTC
    updated_at: datetime
    history: tuple[SagaStep, ...] = ()


class Saga(Service, Generic[S]):
    """A service that keeps a ``state`` (a pydantic model) per value of the ``key`` field
    of the events it handles, in ``store`` (a ``choreo.sql.Store``: required).

    ``@saga.starts(Event)`` creates the instance (a second start for an existing key is a
    duplicate: ignored); ``@saga.on(Event)`` applies an event to an existing instance. An
    event for no instance is ignored with a log line, or dead-lettered with
    ``on_missing="dead-letter"``; one for a completed instance is ignored with a log line.
    The state of a new instance is made from the fields the start event shares with it.
    The other options are ``Service``'s.
    """

    def __init__(
        self,
        name: str,
        *,
        state: type[S],
        key: str,
        store: object,
        on_missing: str = "ignore",
        prefetch: int | None = None,
        concurrency: int | None = None,
        retry: Retry | None = None,
        queue_type: str | None = None,
        delivery_limit: int | None = None,
        emits: EventTypes | None = None,
        requests: EventTypes | None = None,
    ) -> None:
        where = f"Saga({name!r})"
        if not (isinstance(state, type) and issubclass(state, BaseModel)):
            raise ConfigurationError(f"{where}: state must be a pydantic model, got {state!r}")
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"{where}: key must name a field of its events")
        if on_missing not in ON_MISSING:
            raise ConfigurationError(
                f"{where}: on_missing must be 'ignore' or 'dead-letter', not {on_missing!r}"
            )
        if store is None:
            raise ConfigurationError(f"{where}: a saga needs a store (choreo.sql.Store)")
        from .sql.sagas import SagaRows  # the sql extra: SQLAlchemy, imported here only

        rows = SagaRows(store, where)
        super().__init__(
            name,
            prefetch=prefetch,
            concurrency=concurrency,
            retry=retry,
            queue_type=queue_type,
            delivery_limit=delivery_limit,
            emits=emits,
            requests=requests,
            store=rows.store,
        )
        self.state_type = state
        self.key = key
        self.on_missing = on_missing
        self._rows = rows
        self._starts: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"Saga({self.name!r}, state={self.state_type.__name__}, key={self.key!r}, "
            f"starts={sorted(self._starts)}, events={list(self.handlers)})"
        )

    @property
    def starting(self) -> frozenset[str]:
        """The names of the events that start an instance."""
        return frozenset(self._starts)

    def starts(
        self,
        event_type: type[Event],
        *,
        retry: Retry | None = None,
        emits: EventTypes | None = None,
        requests: EventTypes | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as the handler of ``event_type`` that creates
        the instance of its key."""
        event_name_of(event_type)

        def register(func: F) -> F:
            self.add_handler(
                event_type, func, retry=retry, emits=emits, requests=requests, starts=True
            )
            return func

        return register

    def add_handler(
        self,
        event_type: type[Event],
        func: HandlerFunc,
        *,
        retry: Retry | None = None,
        emits: EventTypes | None = None,
        requests: EventTypes | None = None,
        starts: bool = False,
    ) -> Handler:
        """Register ``func(event, saga)`` for ``event_type`` (``starts``: it creates the
        instance); what ``@saga.on`` and ``@saga.starts`` do."""
        name = event_name_of(event_type)
        where = f"saga {self.name!r}, handler {getattr(func, '__qualname__', func)!r}"
        if self.key not in event_type.model_fields:
            raise ConfigurationError(
                f"{where}: {event_type.__name__} has no field {self.key!r}, the key of the saga "
                "(every event a saga handles carries it)"
            )
        if starts:
            shared = event_type.model_fields.keys()
            required = [n for n, f in self.state_type.model_fields.items() if f.is_required()]
            if missing := [n for n in required if n not in shared]:
                raise ConfigurationError(
                    f"{where}: the state of a new instance is made from the fields of "
                    f"{event_type.__name__}, which has none named {', '.join(missing)}: give "
                    f"them defaults in {self.state_type.__name__}"
                )
        wrapper = self._wrap(func, event_type, starts, where)
        handler = super().add_handler(
            event_type, wrapper, retry=retry, emits=emits, requests=requests
        )
        if starts:
            self._starts.add(name)
        return handler

    def add_responder(
        self,
        request_type: type[Event],
        func: HandlerFunc,
        *,
        emits: EventTypes | None = None,
        requests: EventTypes | None = None,
    ) -> Handler:
        raise ConfigurationError(
            f"saga {self.name!r} handles events only; answer requests from a Service"
        )

    def _wrap(
        self, func: HandlerFunc, event_type: type[Event], starts: bool, where: str
    ) -> HandlerFunc:
        takes_saga = _takes_saga(func, where)
        saga, field, rows, state_type = self.name, self.key, self._rows, self.state_type
        shared = [n for n in state_type.model_fields if n in event_type.model_fields]
        missing_to_dlq = self.on_missing == "dead-letter"

        async def handle(event: Event, ctx: Context) -> None:
            value = getattr(event, field)
            if value is None or value == "":
                raise Reject(f"saga {saga!r}: {ctx.event_name} has no {field!r} (its key)")
            key, session = str(value), ctx.session
            if starts:
                state = state_type.model_validate({n: getattr(event, n) for n in shared})
                initial = state.model_dump(mode="json")
                if not await rows.create(session, saga, key, initial, RUNNING):
                    _ignored(saga, key, ctx, "it exists already (a duplicate start)")
                    return
                version = 0
            else:
                found = await rows.load(session, saga, key)
                if found is None:
                    if missing_to_dlq:
                        raise Reject(f"saga {saga!r} has no instance {key!r}")
                    _ignored(saga, key, ctx, "there is no such instance")
                    return
                if found.status == COMPLETED:
                    _ignored(saga, key, ctx, "it is completed")
                    raise Skipped("saga-completed", f"saga {saga!r}: {key!r} is completed")
                state, version = state_type.model_validate(found.state), found.version
            context = SagaContext(saga, key, state, version, ctx, rows)
            await (func(event, context) if takes_saga else func(event))
            await rows.save(
                session,
                saga,
                key,
                state=context.state.model_dump(mode="json"),
                status=COMPLETED if context.completed else RUNNING,
                version=version,
                event=ctx.event_name,
                message_id=ctx.message_id,
            )

        for name in ("__module__", "__qualname__", "__name__", "__doc__"):  # not __wrapped__
            setattr(handle, name, getattr(func, name, getattr(handle, name)))
        return handle

    # -- reading instances (outside handlers) ----------------------------------------------

    async def instance(self, key: str) -> SagaInstance[S] | None:
        """The instance of ``key`` with its history, or None."""
        found = await self._rows.get(self.name, key)
        if found is None:
            return None
        row, history = found
        steps = tuple(
            SagaStep(h.version, h.event, h.message_id, h.status, h.handled_at) for h in history
        )
        return self._instance(row, steps)

    async def instances(
        self, *, status: str | None = None, limit: int = 1000
    ) -> list[SagaInstance[S]]:
        """Instances (only those of ``status``: running, completed), last updated first,
        without their history."""
        return [self._instance(row) for row in await self._rows.find(self.name, status, limit)]

    def _instance(self, row: Any, history: tuple[SagaStep, ...] = ()) -> SagaInstance[S]:
        return SagaInstance(
            self.name,
            row.key,
            self.state_type.model_validate(row.state),
            row.status,
            row.version,
            row.created_at,
            row.updated_at,
            history,
        )


def _ignored(saga: str, key: str, ctx: Context, why: str) -> None:
    log.info(
        "saga %r: %s %s for instance %r ignored: %s",
        saga,
        ctx.event_name,
        ctx.message_id or "-",
        key,
        why,
        extra={"saga": saga, "saga_key": key},
    )


def _takes_saga(func: Any, where: str) -> bool:
    """Check a saga handler's signature: ``(event)`` or ``(event, saga)`` (True), async."""
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(f"{where} must be an async function (async def)")
    parameters = inspect.signature(func).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        raise ConfigurationError(f"{where}: *args and **kwargs are not supported")
    if any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in parameters):
        raise ConfigurationError(f"{where}: keyword-only parameters need a default")
    positional = [p for p in parameters if p.kind != p.KEYWORD_ONLY and p.default is p.empty]
    if len(positional) not in (1, 2):
        raise ConfigurationError(
            f"{where} must take (event, saga) or (event), not {len(positional)} parameters"
        )
    return len(positional) == 2
