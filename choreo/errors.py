"""Every error choreo raises, under one root.

    ChoreoError
     ├── ConfigurationError     a mistake in code or settings, raised at import/registration/start
     ├── ConnectionFailed       the broker cannot be reached, or the connection was lost for good
     ├── PublishError           the broker did not confirm a publish (nack, return, timeout)
     └── Reject                 raised by a handler: dead-letter this message now, no retries

Errors of the transport library (aio-pika, aiormq) are translated at the edge, in
``choreo/transports/``; none of them reaches a user of choreo.
"""

from __future__ import annotations

__all__ = ["ChoreoError", "ConfigurationError", "ConnectionFailed", "PublishError", "Reject"]


class ChoreoError(Exception):
    """Root of every error raised by choreo."""


class ConfigurationError(ChoreoError):
    """The code or the settings are wrong; raised before any message is consumed."""


class ConnectionFailed(ChoreoError):
    """The broker could not be reached (the message names the URL without its password)."""


class PublishError(ChoreoError):
    """The broker did not confirm a message, so it may not have been stored."""


class Reject(ChoreoError):
    """Raise from a handler to dead-letter the message at once, with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
