"""How a bus consumes and publishes: :class:`Settings`, the keywords of ``connect()``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from . import topology
from .errors import ConfigurationError
from .observability.observer import Observer
from .retry import DEFAULT_RETRY, Retry
from .storage import Storage
from .topology import DEFAULT_DELIVERY_LIMIT

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_PREFETCH",
    "DEFAULT_REQUEST_TIMEOUT",
    "BusOptions",
    "Settings",
    "settings_from",
]

DEFAULT_PREFETCH = 64
DEFAULT_CONCURRENCY = 32
DEFAULT_REQUEST_TIMEOUT = 5.0
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    """How a bus consumes and publishes; ``connect()`` takes each as a keyword.

    ``prefetch``, ``concurrency``, ``retry`` and ``queue_type`` (``"classic"`` or
    ``"quorum"``) are defaults for services that do not set their own. ``on_unroutable``:
    ``"warn"`` logs, ``"raise"`` raises ``Unroutable`` when an event is published to an
    exchange no queue is bound to. ``observer`` (default: one log line per handled message)
    is told of every handled message and publish. A consumed body over
    ``max_message_size`` bytes is dead-lettered. ``shutdown_timeout``: seconds ``stop()``
    lets handlers finish. ``stall_timeout``: ``bus.healthy`` (``/healthz``) turns false when
    a worker holds deliveries and settled none for this many seconds. ``delivery_limit``:
    deliveries of one message that kill their worker (a crash, an OOM kill) before it is
    dead-lettered as a crash loop. ``stores``: the stores (``choreo.sql.Store``) whose
    outbox this bus relays (a started service's own store is relayed anyway).
    ``partition_heartbeat``: seconds between the announcements by which the processes of a
    partitioned service share its partitions; one silent for three is taken for gone.
    """

    prefetch: int = DEFAULT_PREFETCH
    concurrency: int = DEFAULT_CONCURRENCY
    retry: Retry = DEFAULT_RETRY
    shutdown_timeout: float = 30.0
    stall_timeout: float = 300.0
    queue_type: str = "classic"
    delivery_limit: int = DEFAULT_DELIVERY_LIMIT
    on_unroutable: str = "warn"
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    observer: Observer = field(default_factory=Observer)
    stores: Sequence[Storage] = ()
    partition_heartbeat: float = 1.0

    def __post_init__(self) -> None:
        if any(not callable(getattr(store, "relay", None)) for store in self.stores):
            raise ConfigurationError("connect(): stores must be choreo.sql.Store objects")
        for option in ("prefetch", "concurrency", "max_message_size", "delivery_limit"):
            value = getattr(self, option)
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"connect(): {option} must be a positive int")
        if self.queue_type not in topology.QUEUE_TYPES:
            raise ConfigurationError(f"connect(): queue_type must be one of {topology.QUEUE_TYPES}")
        if self.on_unroutable not in ("warn", "raise"):
            raise ConfigurationError("connect(): on_unroutable must be 'warn' or 'raise'")
        if not isinstance(self.partition_heartbeat, int | float) or self.partition_heartbeat <= 0:
            raise ConfigurationError("connect(): partition_heartbeat must be a positive number")
        if not isinstance(self.retry, Retry):
            raise ConfigurationError("connect(): retry must be a choreo.Retry")


class BusOptions(TypedDict, total=False):
    """The keywords of ``connect()`` that become the bus's :class:`Settings`."""

    prefetch: int
    concurrency: int
    retry: Retry
    shutdown_timeout: float
    stall_timeout: float
    queue_type: str
    delivery_limit: int
    on_unroutable: str
    max_message_size: int
    observer: Observer | None
    stores: Sequence[Storage]
    partition_heartbeat: float


def settings_from(options: BusOptions) -> Settings:
    given: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    unknown = set(given) - set(Settings.__dataclass_fields__)
    if unknown:
        raise ConfigurationError(f"connect(): unknown option(s) {', '.join(sorted(unknown))}")
    return Settings(**given)
