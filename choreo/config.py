"""Settings read from the environment, and URL handling shared by the CLI and the bus."""

from __future__ import annotations

import os
import re

__all__ = [
    "DEFAULT_BROKER_URL",
    "broker_url",
    "namespace",
    "redact",
    "scrub",
    "unencoded_password",
]

DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/"


def broker_url(url: str | None = None) -> str:
    """``url``, else ``CHOREO_BROKER_URL``, else the local RabbitMQ."""
    return url or os.environ.get("CHOREO_BROKER_URL") or DEFAULT_BROKER_URL


def namespace(value: str | None = None) -> str:
    """``value``, else ``CHOREO_NAMESPACE``, else no namespace (``""``)."""
    if value is not None:
        return value
    return os.environ.get("CHOREO_NAMESPACE", "")


# scheme://user:PASSWORD@ - the password runs to the last "@" before the next URL of a
# list, so an unencoded "/", "#", "?", "," or "@" in it cannot end it early
_CREDENTIALS = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s,]*):"
    r"(?P<password>(?:(?![A-Za-z][A-Za-z0-9+.\-]*://)\S)*)@"
)


def redact(url: str) -> str:
    """``url`` (or a comma-separated list) with every password replaced by ``***``, safe to
    log, whatever characters the password holds."""
    return _CREDENTIALS.sub(lambda match: f"{match['head']}:***@", url)


def unencoded_password(url: str) -> bool:
    """Whether a password in ``url`` holds a character that must be percent-encoded there
    (``/``, ``#``, ``?``, ``,``, ``@``): such a URL cannot be parsed as meant."""
    return any(set(m["password"]) & set("/#?,@") for m in _CREDENTIALS.finditer(url))


def scrub(text: str, url: str) -> str:
    """``text`` (an error message, say) with every password of ``url`` replaced by ``***``."""
    for match in _CREDENTIALS.finditer(url):
        if match["password"]:
            text = text.replace(match["password"], "***")
    return redact(text)
