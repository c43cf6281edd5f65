"""Transports: the broker backends behind one small interface (see ``base.py``).

:func:`transport_for` picks one by URL; each is imported only when its URL is used.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..config import redact, unencoded_password
from ..errors import ConfigurationError
from .base import Transport

__all__ = ["transport_for"]


def transport_for(
    url: str, *, connection_name: str, publish_timeout: float, publish_window: int
) -> Transport:
    """The transport for ``url``: ``memory://[NAME]``, or RabbitMQ at ``amqp(s)://...``
    (several comma-separated for a cluster); ``ConfigurationError`` for anything else."""
    if unencoded_password(url):
        raise ConfigurationError(
            f"invalid broker URL {redact(url)}: its password holds '/', '#', '?', ',' "
            "or '@', which must be percent-encoded in a URL (e.g. '/' as %2F, '@' as %40)"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigurationError(f"invalid broker URL {redact(url)}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme == "memory":
        from .memory import MemoryTransport

        return MemoryTransport(parts.netloc + parts.path.rstrip("/"))
    if scheme in ("amqp", "amqps"):
        if not parts.hostname:
            raise ConfigurationError(f"invalid broker URL {redact(url)}: no host")
        from .rabbitmq import RabbitMQTransport

        return RabbitMQTransport(
            url,
            connection_name=connection_name,
            publish_timeout=publish_timeout,
            publish_window=publish_window,
        )
    raise ConfigurationError(
        f"unsupported broker URL {redact(url)!r}: use amqp://, amqps:// or memory://"
    )
