"""Every error choreo raises, under one root.

    ChoreoError
     ├── ConfigurationError     a mistake in code or settings, raised at import/registration/start
     ├── ConnectionFailed       the broker cannot be reached, or the connection was lost for good
     ├── PublishError           the broker did not confirm a publish (nack, timeout)
     │    └── Unroutable        no queue was bound for a mandatory message
     │         └── NoResponder  no service responds to this request
     ├── RequestTimeout         no reply came within the request's timeout
     ├── RemoteError            the responder raised; carries the remote type and message
     ├── InvalidReply           the reply does not validate against the expected reply type
     └── Reject                 raised by a handler: dead-letter this message now, no retries

Errors of the transport library (aio-pika, aiormq) are translated at the edge, in
``choreo/transports/``; none of them reaches a user of choreo.
"""

from __future__ import annotations

__all__ = [
    "ChoreoError",
    "ConfigurationError",
    "ConnectionFailed",
    "InvalidReply",
    "NoResponder",
    "PublishError",
    "Reject",
    "RemoteError",
    "RequestTimeout",
    "Unroutable",
]


class ChoreoError(Exception):
    """Root of every error raised by choreo."""


class ConfigurationError(ChoreoError):
    """The code or the settings are wrong; raised before any message is consumed."""


class ConnectionFailed(ChoreoError):
    """The broker could not be reached (the message names the URL without its password)."""


class PublishError(ChoreoError):
    """The broker did not confirm a message in time: it may not have been stored, or it
    may have been delivered all the same (the confirm was lost). Publish it again if it
    must arrive; consumers see duplicates either way (at-least-once)."""


class Reject(ChoreoError):
    """Raise from a handler to dead-letter the message at once, with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unroutable(PublishError):
    """A mandatory message reached no queue: nothing is bound for it."""


class NoResponder(Unroutable):
    """No service responds to this request (no queue is bound for it)."""


class RequestTimeout(ChoreoError):
    """No reply came within the request's timeout."""


class RemoteError(ChoreoError):
    """The responding handler raised; ``type`` and ``message`` describe the remote error."""

    def __init__(self, type: str, message: str, service: str = "") -> None:
        where = f" in {service}" if service else ""
        super().__init__(f"{type}{where}: {message}")
        self.type = type
        self.message = message
        self.service = service


class InvalidReply(ChoreoError):
    """A reply arrived but is not a valid instance of the expected reply type."""
