"""Settings read from the environment, and URL handling shared by the CLI and the bus."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

__all__ = ["DEFAULT_BROKER_URL", "broker_url", "namespace", "redact"]

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/"


def broker_url(url: str | None = None) -> str:
    """``url``, else ``CHOREO_BROKER_URL``, else the local RabbitMQ."""
    return url or os.environ.get("CHOREO_BROKER_URL") or DEFAULT_BROKER_URL


def namespace(value: str | None = None) -> str:
    """``value``, else ``CHOREO_NAMESPACE``, else no namespace (``""``)."""
    if value is not None:
        return value
    return os.environ.get("CHOREO_NAMESPACE", "")


def redact(url: str) -> str:
    """``url`` (or a comma-separated list) with passwords replaced by ``***``, safe to log."""
    if "," in url:
        return ",".join(redact(part) for part in url.split(","))
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
