"""Log formats of ``choreo run``, and the ids of the message being handled in every line.

While a handler runs, :data:`HANDLING` holds its service, event, message id and
correlation id. :class:`HandlingFilter` copies them onto every log record (yours too:
``logging.getLogger(__name__).info(...)`` inside a handler carries them), so one
choreography can be followed across services by its correlation id. ``choreo run``
installs the filter; an application that runs a bus itself adds it to its own handler::

    handler.addFilter(choreo.observability.logs.HandlingFilter())

``--log-format json`` writes one JSON object per line, the ids as keys; the plain format
appends them to the line as ``[service event message_id corr=ID]``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from typing import Protocol

__all__ = ["HANDLING", "Handling", "HandlingFilter", "JsonFormatter", "TextFormatter"]


class Handling(Protocol):
    """What a handler is working on (its ``choreo.Context`` is one: no copy is made)."""

    @property
    def service(self) -> str: ...
    @property
    def event_name(self) -> str: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def correlation_id(self) -> str | None: ...


HANDLING: contextvars.ContextVar[Handling | None] = contextvars.ContextVar(
    "choreo_handling", default=None
)


class HandlingFilter(logging.Filter):
    """Adds ``service``, ``event``, ``message_id`` and ``correlation_id`` to each record
    logged while a handler runs (unless the record has them already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        handling = HANDLING.get()
        if handling is not None:
            for name, value in (
                ("service", handling.service),
                ("event", handling.event_name),
                ("message_id", handling.message_id or "-"),
                ("correlation_id", handling.correlation_id or "-"),
            ):
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [service event message_id corr=ID]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        correlation = getattr(record, "correlation_id", None)
        if correlation is None:
            return line
        where = " ".join(
            str(value)
            for value in (getattr(record, "service", None), getattr(record, "event", None),
                          getattr(record, "message_id", None))
            if value
        )  # fmt: skip
        return f"{line} [{where} corr={correlation}]"


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
