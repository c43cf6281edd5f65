"""The one place where errors of aio-pika, aiormq and pamqp become choreo's own.

Every method of the transport runs the broker calls it makes inside :func:`translated`:

* ``PRECONDITION_FAILED`` (a declaration that contradicts what exists) -> ``ConfigurationError``
* ``NOT_FOUND`` (no such queue or exchange) -> ``ConfigurationError``
* ``ACCESS_REFUSED`` (permissions, an exclusive queue of another connection)
  -> ``ConfigurationError``
* anything else the client libraries raise (a closed channel or connection, a frame that
  cannot be encoded, a socket error) -> ``ConnectionFailed``

``ChoreoError`` passes through untouched, and so does the cancellation of the calling task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import aio_pika
import aiormq
import pamqp.exceptions

from ...errors import ChoreoError, ConfigurationError, ConnectionFailed

__all__ = ["AMQP_ERRORS", "translated"]

AMQP_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    pamqp.exceptions.PAMQPException,
    ConnectionError,
    OSError,
    RuntimeError,
)


def _cancelled_by_the_client_library() -> bool:
    """aiormq cancels the calls in flight on a channel the broker closed; the caller's
    task itself was not cancelled then."""
    task = asyncio.current_task()
    return task is not None and not task.cancelling()


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Run the block; raise any client library error as the matching ``ChoreoError``.
    ``what`` names the object the block works on, e.g. ``queue 'catalog'``."""
    try:
        yield
    except ChoreoError:
        raise
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigurationError(f"{what} exists with other settings: {exc}") from exc
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise ConfigurationError(f"{what}: {exc}") from exc
    except aiormq.exceptions.ChannelAccessRefused as exc:
        raise ConfigurationError(f"{what}: {exc}") from exc
    except AMQP_ERRORS as exc:
        raise ConnectionFailed(f"{what}: {type(exc).__name__}: {exc}") from exc
    except asyncio.CancelledError as exc:
        if _cancelled_by_the_client_library():
            raise ConnectionFailed(f"{what}: the channel closed: {exc}") from exc
        raise
