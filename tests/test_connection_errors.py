"""A broker that refuses the connection, or is not there: one line from choreo, in words.

Wrong password, a vhost that does not exist (RabbitMQ answers ``Connection.Open`` with
``Connection.Close`` 530 NOT_ALLOWED) and nothing listening: ``choreo run`` and ``choreo
publish`` exit 1 with exactly one line on stderr that names the cause, and none of aio-pika's
or aiormq's log lines before it (no false "Reconnecting after 1 seconds."), never the
password. After a connect that succeeded, aio-pika's reconnect lines are still logged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from choreo import ConnectionFailed, connect
from choreo.transports.rabbitmq._errors import refusal

from .helpers import WAIT
from .support.tcp_proxy import FaultProxy
from .test_cli import choreo_cmd

WRONG_PASSWORD = "not-the-password-4711"
NOISE = ("Reconnecting", "aiormq", "aio_pika", "Traceback", "Expected one of", "Connection.Close")


def _free_port(host: str) -> int:
    """A port on ``host`` that nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _parts(broker_url: str) -> tuple[str, int, str, str]:
    parts = urlsplit(broker_url)
    return (
        parts.hostname or "127.0.0.1",
        parts.port or 5672,
        parts.username or "guest",
        parts.password or "guest",
    )


def _wrong_password(broker_url: str) -> tuple[str, str, str]:
    host, port, user, _ = _parts(broker_url)
    url = f"amqp://{user}:{WRONG_PASSWORD}@{host}:{port}/"
    words = f"RabbitMQ at {host}:{port} refused the credentials of user {user!r} "
    return url, WRONG_PASSWORD, words + "(wrong user name or password)"


def _no_such_vhost(broker_url: str) -> tuple[str, str, str]:
    host, port, user, password = _parts(broker_url)
    vhost = "choreo-test-no-such-vhost"
    url = f"amqp://{user}:{password}@{host}:{port}/{vhost}"
    words = (
        f"RabbitMQ at {host}:{port} refused access to virtual host {vhost!r} for user "
        f"{user!r}: the vhost does not exist, or the user has no permission on it"
    )
    return url, f":{password}@", words


def _nothing_listening(broker_url: str) -> tuple[str, str, str]:
    host, _, user, _ = _parts(broker_url)
    port = _free_port(host)
    url = f"amqp://{user}:{WRONG_PASSWORD}@{host}:{port}/"
    return url, WRONG_PASSWORD, f"nothing listens at {host}:{port}"


CASES: dict[str, Callable[[str], tuple[str, str, str]]] = {
    "wrong-password": _wrong_password,
    "no-such-vhost": _no_such_vhost,
    "nothing-listening": _nothing_listening,
}
COMMANDS = {
    "run": ("run", "tests.fixtures.worker:service"),
    "publish": ("publish", "ping", '{"n": 1}'),
    "dlq-list": ("dlq", "list", "worker"),
}


@pytest.mark.broker
@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refused_connection_is_one_line_in_words(
    broker_url: str, case: str, command: str
) -> None:
    """Exit 1; stderr is exactly one line, choreo's, naming the cause; no client library
    log line; the password nowhere."""
    url, secret, words = CASES[case](broker_url)
    result = choreo_cmd(*COMMANDS[command], "--broker", url)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("choreo: error: cannot connect to RabbitMQ at amqp://"), line
    assert words in line
    for noise in NOISE:
        assert noise not in line
    assert secret not in result.stderr + result.stdout
    assert result.stdout == ""


@pytest.mark.broker
@pytest.mark.parametrize("case", sorted(CASES))
async def test_connect_raises_the_words_and_logs_nothing_of_the_client_libraries(
    broker_url: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """In process: ``ConnectionFailed`` with the words, and no record of aio-pika or aiormq
    at INFO or above while the first connect fails."""
    url, secret, words = CASES[case](broker_url)
    caplog.set_level(logging.INFO)
    with pytest.raises(ConnectionFailed) as info:
        async with connect(url):
            pass
    assert words in str(info.value)
    assert secret not in str(info.value)
    noisy = [r for r in caplog.records if r.name.startswith(("aio_pika", "aiormq"))]
    assert noisy == []


@pytest.mark.broker
async def test_several_nodes_each_say_why(broker_url: str) -> None:
    """A cluster URL list: one reason per node, in one error."""
    down, _, nobody = _nothing_listening(broker_url)
    wrong, _, refused = _wrong_password(broker_url)
    with pytest.raises(ConnectionFailed) as info:
        async with connect(f"{down},{wrong}"):
            pass
    assert nobody in str(info.value)
    assert refused in str(info.value)
    assert WRONG_PASSWORD not in str(info.value)


@pytest.mark.broker
async def test_reconnects_after_a_successful_connect_are_still_logged(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the first attempt is quiet: a connection lost later is logged by aio-pika as
    before (its "Reconnecting"), and comes back. (Records are matched by their format
    string: the arguments of some of aio-pika's cannot be formatted once the connection
    is gone.)"""
    host, port, user, password = _parts(broker_url)
    caplog.set_level(logging.INFO)
    async with FaultProxy(host, port) as proxy:
        url = f"amqp://{user}:{password}@127.0.0.1:{proxy.port}/"
        async with connect(url, connection_name="choreo-test-reconnect-logs") as bus:
            proxy.cut()
            async with asyncio.timeout(WAIT):
                while not any("Reconnecting" in str(r.msg) for r in caplog.records):
                    await asyncio.sleep(0.05)
                while not bus.transport.connected:
                    await asyncio.sleep(0.05)
    reconnecting = [r for r in caplog.records if "Reconnecting" in str(r.msg)]
    assert reconnecting[0].name.startswith("aio_pika")


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        OSError(
            "Multiple exceptions: [Errno 111] Connect call failed ('::1', 1, 0, 0), "
            "[Errno 111] Connect call failed ('127.0.0.1', 1)"
        ),
    ],
)
def test_refused_from_every_address_is_nothing_listening(error: OSError) -> None:
    """localhost may resolve to ::1 and 127.0.0.1; refused on both: nothing listens."""
    assert refusal(error, "amqp://u:p@localhost:1/", 10.0) == "nothing listens at localhost:1"


def test_an_unknown_failure_has_no_words() -> None:
    """What is none of the known causes is left to the caller (the library's text)."""
    error = OSError("Multiple exceptions: [Errno 111] refused, [Errno 113] no route")
    assert refusal(error, "amqp://u:p@localhost:1/", 10.0) is None
    assert refusal(RuntimeError("odd"), "amqp://u:p@localhost:1/", 10.0) is None
