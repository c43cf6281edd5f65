"""choreo: event-driven choreography between microservices over RabbitMQ."""

from importlib import metadata as _metadata

from .bus import Bus, connect
from .context import Context
from .errors import (
    ChoreoError,
    ConfigurationError,
    ConnectionFailed,
    InvalidReply,
    NoResponder,
    PublishError,
    Reject,
    RemoteError,
    RequestTimeout,
    Unroutable,
)
from .events import Event
from .retry import Retry
from .saga import Saga, SagaContext
from .service import Service

try:
    __version__ = _metadata.version("choreo-mq")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = [
    "Bus",
    "ChoreoError",
    "ConfigurationError",
    "ConnectionFailed",
    "Context",
    "Event",
    "InvalidReply",
    "NoResponder",
    "PublishError",
    "Reject",
    "RemoteError",
    "RequestTimeout",
    "Retry",
    "Saga",
    "SagaContext",
    "Service",
    "Unroutable",
    "__version__",
    "connect",
]
