"""The one place where errors of aio-pika, aiormq and pamqp become choreo's own.

Every method of the transport runs the broker calls it makes inside :func:`translated`:

* ``PRECONDITION_FAILED`` (a declaration that contradicts what exists) -> ``ConfigurationError``
* ``NOT_FOUND`` (no such queue or exchange) -> ``ConfigurationError``
* ``ACCESS_REFUSED`` (permissions, an exclusive queue of another connection)
  -> ``ConfigurationError``
* anything else the client libraries raise (a closed channel or connection, a frame that
  cannot be encoded, a socket error) -> ``ConnectionFailed``

``ChoreoError`` passes through untouched, and so does the cancellation of the calling task.

:func:`refusal` puts a failed connect in words: the credentials, the vhost, nothing
listening, a host name that does not resolve, no answer in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import socket
from collections.abc import Iterator

import aio_pika
import aiormq
import pamqp.exceptions
from yarl import URL

from ...errors import ChoreoError, ConfigurationError, ConnectionFailed

__all__ = ["AMQP_ERRORS", "refusal", "translated"]

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


# getaddrinfo's "no such name" and "try again" (EAI_NODATA is not on every platform)
_UNRESOLVED = {
    socket.EAI_NONAME,
    socket.EAI_AGAIN,
    getattr(socket, "EAI_NODATA", socket.EAI_NONAME),
}


def _nothing_listens(exc: BaseException) -> bool:
    """Connection refused, from every address the host name gave (asyncio joins several
    failures into one ``OSError`` without ``errno``)."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno is not None:
        return exc.errno == errno.ECONNREFUSED
    codes = re.findall(r"\[Errno (-?\d+)\]", str(exc))
    return bool(codes) and all(int(code) == errno.ECONNREFUSED for code in codes)


def _vhost_refused(exc: BaseException) -> bool:
    """RabbitMQ answered ``Connection.Open`` (which names the vhost) with ``Connection.Close``
    (530 NOT_ALLOWED): aiormq reports it as an unexpected frame, without the reply text."""
    if isinstance(exc, aiormq.exceptions.ConnectionNotAllowed):
        return True
    text = str(exc)
    return (
        isinstance(exc, aiormq.exceptions.InvalidFrameError)
        and "Connection.OpenOk" in text
        and "Connection.Close" in text
    )


def refusal(exc: BaseException, url: str, timeout: float) -> str | None:
    """Why connecting to ``url`` (one node) failed, in words (no password: they name the
    host, port, user and vhost only); None when ``exc`` is none of the known causes."""
    parsed = URL(url)
    default_port = 5671 if parsed.scheme == "amqps" else 5672
    where = f"{parsed.host}:{parsed.port or default_port}"
    user = parsed.user or "guest"  # aiormq's default too
    login_refused = "ACCESS_REFUSED" in str(exc)  # 403 in answer to the credentials
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError) and login_refused:
        return (
            f"RabbitMQ at {where} refused the credentials of user {user!r} "
            "(wrong user name or password)"
        )
    if _vhost_refused(exc):
        vhost = parsed.path[1:].replace("%2F", "/") or "/"  # as aiormq reads it
        return (
            f"RabbitMQ at {where} refused access to virtual host {vhost!r} for user {user!r}: "
            "the vhost does not exist, or the user has no permission on it "
            f"(see `rabbitmqctl list_vhosts` and `rabbitmqctl list_permissions -p {vhost}`)"
        )
    if _nothing_listens(exc):
        return f"nothing listens at {where}"
    if isinstance(exc, OSError) and exc.errno in _UNRESOLVED:
        return f"the host name {parsed.host!r} does not resolve ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} within {timeout}s"
    return None
