"""Liveness with real processes on the real broker: a handler that takes its worker down
with ``os._exit`` is dead-lettered after the delivery limit, on classic and quorum queues,
while a supervisor (this test) restarts the worker as systemd or Kubernetes would; a
handler that ignores its cancellation does not keep a stopped worker alive."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from choreo import (
    Bus,
    ChoreoError,
    ConfigurationError,
    ConnectionFailed,
    RequestTimeout,
    Retry,
    Service,
    connect,
    wire,
)
from choreo import dlq as dlq_tools
from choreo.topology import DEFAULT_DELIVERY_LIMIT

from .conftest import Buses
from .fixtures import crasher
from .fixtures.crasher import Job
from .fixtures.stubborn import Stubborn
from .helpers import WAIT

pytestmark = pytest.mark.broker


@pytest.fixture
def transport() -> str:
    return "rabbitmq"


ROOT = Path(__file__).resolve().parent.parent
INNOCENTS = 40
STDERR = None if os.environ.get("CHOREO_TEST_VERBOSE") else subprocess.DEVNULL


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_crash_looping_message_is_dead_lettered_and_the_rest_flows(
    make_bus: Buses, tmp_path: Path, queue_type: str
) -> None:
    """One job that os._exit()s its worker, then 40 innocent jobs, default prefetch (64):
    the culprit reaches the DLQ as KilledItsWorker after DEFAULT_DELIVERY_LIMIT
    deliveries; every innocent is handled, none is dead-lettered."""
    out = tmp_path / "started.jsonl"
    env = {
        **os.environ,
        "CHOREO_TEST_OUT": str(out),
        "CHOREO_TEST_QUEUE_TYPE": queue_type,
        "CHOREO_BROKER_URL": make_bus.url,
    }
    declared = Service("crasher", queue_type=queue_type)  # what the workers will run

    @declared.on(Job)
    async def handle(event: Job) -> None:
        raise AssertionError("this process only declares and publishes")

    publisher = await make_bus()
    await publisher.declare(declared)
    await publisher.publish(Job(n=0, crash=True))
    await asyncio.gather(*(publisher.publish(Job(n=n)) for n in range(1, INNOCENTS + 1)))

    def started() -> list[dict[str, int]]:
        return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []

    def done(letters: list[dlq_tools.DeadLetter]) -> bool:
        return bool(letters) and {e["n"] for e in started()} >= set(range(1, INNOCENTS + 1))

    letters, restarts = await _supervise(publisher, "crasher", env, done, "service")
    (letter,) = letters
    assert letter.error_type == "KilledItsWorker"
    culprit = [entry for entry in started() if entry["n"] == 0]
    assert len(culprit) == DEFAULT_DELIVERY_LIMIT
    assert len({entry["pid"] for entry in culprit}) == DEFAULT_DELIVERY_LIMIT
    innocents = [entry["n"] for entry in started() if entry["n"] != 0]
    assert set(innocents) == set(range(1, INNOCENTS + 1))
    print(
        f"\n{queue_type}: culprit delivered {len(culprit)} times before the DLQ, "
        f"{restarts} worker deaths; {len(innocents)} innocent handler starts for {INNOCENTS} jobs"
    )
    make_bus.extra_queues |= {f"{publisher.namespace}.crasher.suspect"}


async def _supervise(
    publisher: Bus,
    service: str,
    env: dict[str, str],
    done: Callable[[list[dlq_tools.DeadLetter]], bool],
    target: str,
) -> tuple[list[dlq_tools.DeadLetter], int]:
    """Run ``choreo run tests.fixtures.crasher:TARGET`` again each time the culprit kills
    it (exit 7), until ``done(dead letters of SERVICE)``; the letters and the deaths."""
    deaths = 0
    letters: list[dlq_tools.DeadLetter] = []
    async with asyncio.timeout(120):
        while True:
            worker = subprocess.Popen(  # noqa: ASYNC220 - the test is the supervisor
                [sys.executable, "-m", "choreo", "run", f"tests.fixtures.crasher:{target}",
                 "--namespace", publisher.namespace, "--log-level", "WARNING",
                 "--partition-heartbeat", "0.2"],
                cwd=ROOT, env=env, stderr=STDERR,
            )  # fmt: skip
            try:
                while worker.poll() is None:
                    letters = await dlq_tools.list_dead_letters(publisher, service)
                    if done(letters):
                        break
                    await asyncio.sleep(0.1)
            finally:
                if worker.poll() is None:
                    worker.terminate()
                    worker.wait(timeout=WAIT)
            if worker.returncode != 7:  # stopped by us, not by the culprit
                return letters, deaths
            deaths += 1
            assert deaths <= DEFAULT_DELIVERY_LIMIT + 2, "the culprit keeps killing workers"


async def _stubborn_worker(
    make_bus: Buses, tmp_path: Path, *options: str
) -> tuple[subprocess.Popen[bytes], Path, str]:
    """A `choreo run` of the stubborn service, with one handler running that ignores its
    cancellation."""
    started = tmp_path / "started"
    bus = await make_bus()
    worker = subprocess.Popen(  # noqa: ASYNC220 - signals and exit times of a real process
        [sys.executable, "-m", "choreo", "run", "tests.fixtures.stubborn:service",
         "--namespace", bus.namespace, *options],
        cwd=ROOT, stderr=STDERR,
        env={**os.environ, "CHOREO_TEST_OUT": str(started), "CHOREO_BROKER_URL": make_bus.url},
    )  # fmt: skip
    queue = f"{bus.namespace}.stubborn"
    make_bus.extra_queues |= {queue, f"{queue}.dlq", f"{queue}.suspect"}
    make_bus.extra_exchanges.add(f"{bus.namespace}.stubborn")
    async with asyncio.timeout(WAIT):
        while True:
            try:
                await bus.transport.queue_size(queue)
                break
            except ConfigurationError:  # not declared yet
                await asyncio.sleep(0.1)
        await bus.publish(Stubborn(n=1))
        while not started.exists():
            await asyncio.sleep(0.05)
    return worker, started, queue


async def _exit_time(worker: subprocess.Popen[bytes], limit: float) -> float:
    began = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            while worker.poll() is None:
                await asyncio.sleep(0.05)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    return time.monotonic() - began


async def test_a_handler_ignoring_cancellation_does_not_hold_the_process(
    make_bus: Buses, tmp_path: Path
) -> None:
    """SIGTERM with --shutdown-timeout 1 and a handler that swallows its cancellation: the
    process exits shortly after the timeout, and the message is back in its queue."""
    worker, _, queue = await _stubborn_worker(make_bus, tmp_path, "--shutdown-timeout", "1")
    worker.send_signal(signal.SIGTERM)
    took = await _exit_time(worker, 15)
    assert worker.returncode == 0
    # the timeout, 1 s of grace to cancel, bounded channel (1 s) and connection (2 s) closes,
    # 1 s for the loop's last tasks, and slack; before, it never exited by itself
    assert took < 1 + 1 + 3 + 1 + 3
    bus = await make_bus()
    assert await bus.transport.queue_size(queue) == 1


async def test_a_second_signal_aborts_the_stop(make_bus: Buses, tmp_path: Path) -> None:
    """SIGTERM, then SIGTERM again, with a 30 s shutdown timeout: the process does not wait
    the 30 s; its handler is aborted and the message goes back to the queue."""
    worker, _, queue = await _stubborn_worker(make_bus, tmp_path, "--shutdown-timeout", "30")
    worker.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    took = await _exit_time(worker, 15)
    assert took < 0.5 + 1 + 3 + 1 + 3  # not the 30 s of its shutdown timeout
    bus = await make_bus()
    assert await bus.transport.queue_size(queue) == 1


async def test_a_connection_cut_during_replay_is_one_clear_error(make_bus: Buses) -> None:
    """The connection is cut in the middle of a replay: a ChoreoError (not an aiormq
    exception) that says how far it got; no dead letter is lost (each one is in the DLQ,
    in the service queue, or, the last one only, in both)."""
    from .support.tcp_proxy import FaultProxy

    direct = await make_bus()
    declared = Service("replayed")

    @declared.on(Job)
    async def handle(event: Job) -> None:
        raise AssertionError("nothing consumes in this test")

    await direct.declare(declared)
    dlq, queue = f"{direct.namespace}.replayed.dlq", f"{direct.namespace}.replayed"
    for n in range(300):
        await direct.transport.publish(wire.encode(Job(n=n)), "", dlq)
    target = urlsplit(make_bus.url)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 5672) as proxy:
        port = await proxy.start()
        netloc = f"{target.username}:{target.password}@127.0.0.1:{port}"
        through = target._replace(netloc=netloc).geturl()
        cut = await connect(through, namespace=direct.namespace).open()
        try:

            def progress(moved: int, total: int) -> None:
                if moved >= 100:
                    proxy.cut()

            with pytest.raises(ChoreoError) as caught:
                await dlq_tools.replay(cut, "replayed", batch=50, progress=progress)
        finally:
            await cut.close()
    assert "replay" in str(caught.value) or "connection" in str(caught.value).lower()
    assert not type(caught.value).__module__.startswith(("aiormq", "aio_pika", "pamqp"))
    in_dlq = await direct.transport.queue_size(dlq)
    in_queue = await direct.transport.queue_size(queue)
    assert 300 <= in_dlq + in_queue <= 301


async def test_a_large_gather_of_publishes_is_paced_not_timed_out(make_bus: Buses) -> None:
    """20,000 publishes in one gather with a 2 s publish_timeout on a healthy broker: none
    fails. At most publish_window wait for their confirm at once, and the timeout counts
    from then (it used to count the time queued in the client, so the tail timed out)."""
    declared = Service("paced")

    @declared.on(Job)
    async def handle(event: Job) -> None:
        raise AssertionError("nothing consumes in this test")

    bus = await make_bus(publish_timeout=2.0)
    await bus.declare(declared)
    results = await asyncio.gather(
        *(bus.publish(Job(n=n)) for n in range(20_000)), return_exceptions=True
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert await bus.transport.queue_size(f"{bus.namespace}.paced") == 20_000


async def test_requests_right_after_a_connection_cut_never_break_it(make_bus: Buses) -> None:
    """Requests fired while the requester's connection is cut and restored fail only with
    RequestTimeout or ConnectionFailed, and requests, publishes and the connection work
    again within seconds (they used to break the connection for ~35 s with raw aiormq
    errors: the reply consumer was restored after the first request went out)."""
    from .support.tcp_proxy import FaultProxy

    responder = Service("answering")

    @responder.responds(Job)
    async def answer(event: Job) -> Job:
        return Job(n=event.n + 1)

    direct = await make_bus()
    await direct.start(responder)
    target = urlsplit(make_bus.url)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 5672) as proxy:
        port = await proxy.start()
        netloc = f"{target.username}:{target.password}@127.0.0.1:{port}"
        through = target._replace(netloc=netloc, query="heartbeat=2").geturl()
        requester = await connect(through, namespace=direct.namespace).open()
        make_bus.extra_exchanges.add(f"{direct.namespace}.job")  # its publish declares it
        try:
            assert (await requester.request(Job(n=1), Job, timeout=2)).n == 2
            proxy.cut()
            failures: list[BaseException] = []
            answered_again = None
            started = time.monotonic()
            async with asyncio.timeout(30):
                while answered_again is None:
                    try:
                        reply = await requester.request(Job(n=5), Job, timeout=1)
                        answered_again = time.monotonic() - started
                        assert reply.n == 6
                    except (RequestTimeout, ConnectionFailed) as exc:
                        failures.append(exc)
                        await asyncio.sleep(0.05)
            assert answered_again < 10
            await requester.publish(Job(n=7))  # publishing works on the restored connection
            for n in range(20):  # and every request now gets its reply
                assert (await requester.request(Job(n=n), Job, timeout=2)).n == n + 1
        finally:
            await requester.close()
    print(f"\nrequests answered again {answered_again:.1f}s after the cut ({len(failures)} failed)")


async def test_a_dead_letter_with_near_frame_sized_headers_is_sent(make_bus: Buses) -> None:
    """A foreign message whose headers nearly fill a frame fails in its handler: the dead
    letter (original headers plus choreo's reason) would overflow the frame (the broker
    closed the connection with FRAME_ERROR, again and again); it is trimmed and sent,
    with what was dropped named in x-choreo-sanitized."""
    seen: list[int] = []
    service = Service("framed", retry=Retry(attempts=1))

    @service.on(Job)
    async def handle(event: Job) -> None:
        seen.append(event.n)
        raise RuntimeError("x" * 900)

    bus = await make_bus()
    await bus.start(service)
    message = wire.encode(Job(n=1))
    message.headers["payload-copy"] = "y" * 126_000  # fits a 128 KiB frame on its own
    await bus.transport.publish(message, f"{bus.namespace}.job", mandatory=True)
    await bus.publish(Job(n=2))
    async with asyncio.timeout(WAIT):
        while len(letters := await dlq_tools.list_dead_letters(bus, "framed")) < 2:
            await asyncio.sleep(0.05)
    assert sorted(seen) == [1, 2]
    assert {letter.message_id for letter in letters} >= {message.message_id}
    (dead,) = await _take(bus, f"{bus.namespace}.framed.dlq", message.message_id or "")
    assert "dropped payload-copy" in dead.headers[wire.SANITIZED_HEADER]


async def _take(bus: Any, queue: str, message_id: str) -> list[Any]:
    async with bus.transport.fetch(queue, 10) as deliveries:
        return [d.message for d in deliveries if d.message.message_id == message_id]


def _deep_table(depth: int) -> bytes:
    """An AMQP field table nested ``depth`` levels deep, built without recursion."""
    table = b"\x00\x00\x00\x00"
    for _ in range(depth):
        entry = b"\x01kF" + table
        table = struct.pack(">I", len(entry)) + entry
    return table


async def test_properties_the_codec_cannot_decode_are_dead_lettered(
    make_bus: Buses, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A foreign timestamp in microseconds (out of datetime's range) and a header table
    nested 600 deep used to kill aiormq's reader (the connection reconnected every second,
    nothing consumed). Each is now dead-lettered with the reason, on the same connection,
    and the message behind them is handled."""
    import pamqp.encode

    seen: list[int] = []
    service = Service("codec")

    @service.on(Job)
    async def handle(event: Job) -> None:
        seen.append(event.n)

    bus = await make_bus()
    await bus.start(service)

    def amqp_connection() -> object:  # the aiormq connection under the robust one
        return bus.transport._connection.transport.connection  # type: ignore[attr-defined]

    connection = amqp_connection()
    exchange = f"{bus.namespace}.job"
    microseconds = struct.pack(">Q", 1_763_700_000_000_000)
    deep = _deep_table(600)
    real_table = pamqp.encode.METHODS["table"]

    def table(value: Any) -> bytes:
        return deep if value and "deep" in value else real_table(value)

    with monkeypatch.context() as patched:  # what a foreign client would put on the wire
        patched.setitem(pamqp.encode.METHODS, "timestamp", lambda value: microseconds)
        await bus.transport.publish(wire.encode(Job(n=1)), exchange, mandatory=True)
    with monkeypatch.context() as patched:
        patched.setitem(pamqp.encode.METHODS, "table", table)
        message = wire.encode(Job(n=2))
        message.headers["deep"] = True
        await bus.transport.publish(message, exchange, mandatory=True)
    await bus.publish(Job(n=3))
    async with asyncio.timeout(WAIT):
        while len(letters := await dlq_tools.list_dead_letters(bus, "codec")) < 2 or not seen:
            await asyncio.sleep(0.05)
    assert seen == [3]
    assert [letter.error_type for letter in letters] == ["UndecodableProperties"] * 2
    assert "timestamp" in letters[0].error_message
    assert "nested more than 64" in letters[1].error_message
    assert amqp_connection() is connection  # no reconnect happened
    assert bus.transport.connected


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_crash_looping_message_in_a_partition_is_dead_lettered_in_order(
    make_bus: Buses, tmp_path: Path, queue_type: str
) -> None:
    """A partitioned service: event 1 of key A os._exit()s every worker that handles it.
    The partition's quarantine dead-letters it as KilledItsWorker after
    DEFAULT_DELIVERY_LIMIT deaths; A's later events are then handled, in order, and every
    event of key B too (on quorum queues, none reaches the queue's own delivery limit:
    moved to the quarantine, its count starts again); nothing else is dead-lettered."""
    out = tmp_path / "started.jsonl"
    env = {
        **os.environ,
        "CHOREO_TEST_OUT": str(out),
        "CHOREO_BROKER_URL": make_bus.url,
        "CHOREO_TEST_QUEUE_TYPE": queue_type,
    }
    publisher = await make_bus(queue_type=queue_type)
    declared = Service("crasher-ordered", partitions=2, queue_type=queue_type)
    declared.add_handler(crasher.Keyed, crasher.handle_keyed)
    await publisher.declare(declared)
    for seq in range(10):
        await publisher.publish(crasher.Keyed(key="A", seq=seq, crash=seq == 1))
        await publisher.publish(crasher.Keyed(key="B", seq=seq))

    def started() -> list[tuple[str, int]]:
        lines = out.read_text().splitlines() if out.exists() else []
        return [(entry["key"], entry["seq"]) for entry in map(json.loads, lines)]

    wanted = {(key, seq) for key in "AB" for seq in range(10)} - {("A", 1)}

    def done(letters: list[dlq_tools.DeadLetter]) -> bool:
        return bool(letters) and wanted <= set(started())

    letters, _ = await _supervise(publisher, "crasher-ordered", env, done, "ordered")
    (letter,) = letters
    assert letter.error_type == "KilledItsWorker"
    assert json.loads(letter.preview) == {"key": "A", "seq": 1, "crash": True}
    handled = started()
    assert handled.count(("A", 1)) == DEFAULT_DELIVERY_LIMIT
    a = [seq for key, seq in handled if key == "A" and seq != 1]
    assert a == sorted(a), a  # in order (an event in flight at a death may repeat)
    assert handled.index(("A", 2)) > max(i for i, h in enumerate(handled) if h == ("A", 1))
    b = [seq for key, seq in handled if key == "B"]
    assert b == sorted(b), b
    assert set(a) == set(range(10)) - {1}
    assert set(b) == set(range(10))
