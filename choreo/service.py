"""``Service``: a named set of handlers.

``@service.on(Event)`` handles an event published to everyone (choreography);
``@service.responds(Request)`` answers a request with a reply event (request-response).

A service also declares what it sends: ``emits=[...]`` (events it publishes) and
``requests=[...]`` (requests it sends), on the ``Service`` or on one handler. Nothing on
the wire depends on them; ``choreo graph``, ``choreo check`` and ``choreo asyncapi`` read
them, and ``ctx.publish``/``ctx.request`` log a warning (once) for what was not declared.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .context import Context
from .errors import ConfigurationError
from .events import Event, event_name_of
from .retry import Retry
from .storage import Storage
from .wire import check_name

__all__ = ["Handler", "Service"]

HandlerFunc = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=HandlerFunc)
EventTypes = Iterable[type[Event]]


@dataclass(frozen=True, slots=True)
class Handler:
    """One registered handler (or responder): which event, which function, whether it takes
    a context; what it declares it publishes (``emits``) and asks (``requests``); for a
    responder, the reply type its return annotation names (``None`` when unknown)."""

    event_type: type[Event]
    event_name: str
    func: HandlerFunc
    takes_context: bool
    retry: Retry | None
    emits: tuple[type[Event], ...] = ()
    requests: tuple[type[Event], ...] = ()
    reply_type: type[Event] | None = None

    @property
    def qualname(self) -> str:
        return f"{self.func.__module__}.{getattr(self.func, '__qualname__', repr(self.func))}"


class Service:
    """A service: one durable queue, bound to the exchange of each event it handles.

    ``prefetch`` bounds the messages the broker hands to one process of the service before
    they are acknowledged; ``concurrency`` bounds the handlers running at once. ``None``
    takes the bus's defaults (``connect(prefetch=..., concurrency=...)``). ``retry`` is the
    default policy of the service's handlers. ``queue_type="quorum"`` makes every queue of
    the service a quorum queue (replicated on a cluster); ``None`` takes the bus's default.
    ``delivery_limit``: deliveries of one message that kill their worker before it is
    dead-lettered as a crash loop (default: the bus's, 5).
    ``store`` (a ``choreo.sql.Store``): each delivery is handled in one database
    transaction with the inbox and the outbox (``ctx.session``; ``ctx.publish`` stages).
    ``emits`` and ``requests`` list the events the service publishes and the requests it
    sends from any of its handlers (or outside of them, for a feed with no handlers).
    ``partitions``: handle events in order per ordering key (``Event`` ``key=``), spread
    over that many partition queues, each consumed by one process at a time.
    """

    def __init__(
        self,
        name: str,
        *,
        prefetch: int | None = None,
        concurrency: int | None = None,
        retry: Retry | None = None,
        queue_type: str | None = None,
        delivery_limit: int | None = None,
        emits: EventTypes | None = None,
        requests: EventTypes | None = None,
        store: Storage | None = None,
        partitions: int | None = None,
    ) -> None:
        check_name("service name", name)
        if store is not None and not callable(getattr(store, "handling", None)):
            raise ConfigurationError(f"Service({name!r}): store must be a choreo.sql.Store")
        for option, value in (
            ("prefetch", prefetch),
            ("concurrency", concurrency),
            ("delivery_limit", delivery_limit),
            ("partitions", partitions),
        ):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(f"Service({name!r}): {option} must be a positive int")
        if partitions is not None and partitions > 1024:
            raise ConfigurationError(f"Service({name!r}): partitions must be at most 1024")
        if queue_type not in (None, "classic", "quorum"):
            raise ConfigurationError(
                f"Service({name!r}): queue_type must be 'classic' or 'quorum', not {queue_type!r}"
            )
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigurationError(f"Service({name!r}): retry must be a choreo.Retry")
        self.name = name
        self.queue_type = queue_type
        self.delivery_limit = delivery_limit
        self.prefetch = prefetch
        self.concurrency = concurrency
        self.retry = retry
        self.store = store
        self.partitions = partitions
        self.emits = _event_types(f"Service({name!r})", "emits", emits)
        self.requests = _event_types(f"Service({name!r})", "requests", requests)
        self._handlers: dict[str, Handler] = {}
        self._responders: dict[str, Handler] = {}

    def __repr__(self) -> str:
        return (
            f"Service({self.name!r}, events={list(self._handlers)}, "
            f"requests={list(self._responders)})"
        )

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """Event handlers by event name, in the order they were registered."""
        return self._handlers

    @property
    def responders(self) -> Mapping[str, Handler]:
        """Request responders by request name, in the order they were registered."""
        return self._responders

    def may_emit(self, event_name: str, handled: str | None = None) -> bool:
        """Whether the service, or its handler or responder of ``handled``, declares that it
        publishes ``event_name``."""
        declared = [*self.emits, *(t for h in self._registered(handled) for t in h.emits)]
        return any(event_name == t.__event_name__ for t in declared)

    def may_request(self, request_name: str, handled: str | None = None) -> bool:
        """Whether the service, or its handler or responder of ``handled``, declares that it
        sends the request ``request_name``."""
        declared = [*self.requests, *(t for h in self._registered(handled) for t in h.requests)]
        return any(request_name == t.__event_name__ for t in declared)

    def _registered(self, handled: str | None) -> list[Handler]:
        """The handler and the responder of ``handled`` (none, one or both)."""
        found = (self._handlers.get(handled or ""), self._responders.get(handled or ""))
        return [handler for handler in found if handler is not None]

    def responds(
        self,
        request_type: type[Event],
        *,
        emits: EventTypes | None = None,
        requests: EventTypes | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated async function as the responder to ``request_type``.

        It returns the reply, an instance of an ``Event`` subclass; an exception it raises
        reaches the requester as ``choreo.RemoteError``.
        """
        event_name_of(request_type)
        where = f"@{self.name}.responds({request_type.__name__})"
        emitted = _event_types(where, "emits", emits)
        requested = _event_types(where, "requests", requests)

        def register(func: F) -> F:
            self.add_responder(request_type, func, emits=emitted, requests=requested)
            return func

        return register

    def add_responder(
        self,
        request_type: type[Event],
        func: HandlerFunc,
        *,
        emits: EventTypes | None = None,
        requests: EventTypes | None = None,
    ) -> Handler:
        """Register ``func`` as the responder to ``request_type`` (what ``@responds`` does)."""
        name = event_name_of(request_type)
        if name in self._responders:
            raise ConfigurationError(
                f"service {self.name!r} already responds to {name!r} "
                f"with {self._responders[name].qualname}; one responder per request and service"
            )
        takes_context = _takes_context(func, request_type)
        returns = _hints(func).get("return")
        if isinstance(returns, type) and not issubclass(returns, Event):
            raise ConfigurationError(
                f"responder {func.__qualname__!r} for {request_type.__name__} must return an "
                f"Event, not {returns.__name__}"
            )
        where = f"responder {getattr(func, '__qualname__', func)!r} for {request_type.__name__}"
        handler = Handler(
            request_type,
            name,
            func,
            takes_context,
            None,
            emits=_event_types(where, "emits", emits),
            requests=_event_types(where, "requests", requests),
            reply_type=returns if isinstance(returns, type) and returns is not Event else None,
        )
        self._responders[name] = handler
        return handler

    def on(
        self,
        event_type: type[Event],
        *,
        retry: Retry | None = None,
        emits: EventTypes | None = None,
        requests: EventTypes | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated async function as the handler of ``event_type``;
        ``emits``/``requests``: what this handler publishes and asks, beyond the service's."""
        event_name_of(event_type)  # fail on the decorator line, not on the function
        where = f"@{self.name}.on({event_type.__name__})"
        emitted = _event_types(where, "emits", emits)
        requested = _event_types(where, "requests", requests)

        def register(func: F) -> F:
            self.add_handler(event_type, func, retry=retry, emits=emitted, requests=requested)
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
    ) -> Handler:
        """Register ``func`` as the handler of ``event_type``; what ``@service.on`` does."""
        name = event_name_of(event_type)
        if name in self._handlers:
            raise ConfigurationError(
                f"service {self.name!r} already handles {name!r} "
                f"with {self._handlers[name].qualname}; one handler per event and service"
            )
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigurationError(f"retry must be a choreo.Retry, got {retry!r}")
        where = f"handler {getattr(func, '__qualname__', func)!r} for {event_type.__name__}"
        handler = Handler(
            event_type,
            name,
            func,
            _takes_context(func, event_type),
            retry,
            emits=_event_types(where, "emits", emits),
            requests=_event_types(where, "requests", requests),
        )
        self._handlers[name] = handler
        return handler


def _event_types(owner: str, option: str, values: object) -> tuple[type[Event], ...]:
    """``values`` as a tuple of distinct ``Event`` subclasses, or a ``ConfigurationError``."""
    if values is None:
        return ()
    if isinstance(values, type | str | bytes) or not isinstance(values, Iterable):
        raise ConfigurationError(
            f"{owner}: {option} must be a list of choreo.Event subclasses, got {values!r}"
        )
    found: list[type[Event]] = []
    for value in values:
        try:
            event_name_of(value)
        except ConfigurationError:
            raise ConfigurationError(
                f"{owner}: {option} must list choreo.Event subclasses, got {value!r}"
            ) from None
        if value not in found:
            found.append(value)
    return tuple(found)


def _takes_context(func: Any, event_type: type[Event]) -> bool:
    """Check the handler's signature; True if it takes a ``Context`` after the event."""
    where = f"handler {getattr(func, '__qualname__', func)!r} for {event_type.__name__}"
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(f"{where} must be an async function (async def)")
    signature = inspect.signature(func)
    positional = []
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigurationError(f"{where}: *args and **kwargs are not supported")
        if param.kind is param.KEYWORD_ONLY:
            if param.default is param.empty:
                raise ConfigurationError(f"{where}: keyword-only parameter {param.name!r}")
            continue
        if param.default is param.empty:
            positional.append(param)
    if len(positional) not in (1, 2):
        raise ConfigurationError(
            f"{where} must take (event) or (event, ctx), not {len(positional)} parameters"
        )
    hints = _hints(func)
    expected = hints.get(positional[0].name)
    if isinstance(expected, type) and not issubclass(event_type, expected):
        raise ConfigurationError(
            f"{where}: its first parameter is annotated {expected.__name__}, "
            f"which a {event_type.__name__} is not"
        )
    if len(positional) == 2:
        ctx_type = hints.get(positional[1].name)
        if isinstance(ctx_type, type) and not issubclass(Context, ctx_type):
            raise ConfigurationError(
                f"{where}: its second parameter must be a choreo.Context, not {ctx_type.__name__}"
            )
    return len(positional) == 2


def _hints(func: Any) -> dict[str, Any]:
    """Resolved annotations (also with ``from __future__ import annotations``), or ``{}``."""
    try:
        return typing.get_type_hints(func)
    except Exception:  # names the module cannot resolve: nothing to check against
        return {}
