"""The ``choreo`` command, run as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

import choreo
from choreo.transports.base import FANOUT, QueueSpec

from .conftest import Buses, unique
from .fixtures.worker import Ping
from .helpers import WAIT, ready_count

ROOT = Path(__file__).resolve().parent.parent


def choreo_cmd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "choreo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


class TestErrors:
    @pytest.mark.parametrize(
        ("target", "message"),
        [
            ("no_such_module:service", "no module named 'no_such_module'"),
            ("tests.fixtures.no_such:service", "no module named 'tests.fixtures.no_such'"),
            ("tests.fixtures.worker:nope", "has no attribute 'nope'"),
            ("tests.fixtures.worker:NOT_A_SERVICE", "is a int, not a choreo.Service"),
            ("tests.fixtures.broken:service", "RuntimeError: boom at import time"),
            ("tests.fixtures.worker", "expected MODULE:ATTRIBUTE"),
        ],
    )
    def test_bad_target_is_one_clear_line(self, target: str, message: str) -> None:
        """Exit 2, one line on stderr naming the problem, no traceback."""
        result = choreo_cmd("run", target, "--broker", "memory://")
        assert result.returncode == 2
        assert message in result.stderr
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr

    @pytest.mark.parametrize("url", ["http://localhost:5672/", "amqp://"])
    def test_bad_url_is_one_clear_line(self, url: str) -> None:
        """A URL choreo cannot use: exit 2 and a line that says so."""
        result = choreo_cmd("run", "tests.fixtures.worker:service", "--broker", url)
        assert result.returncode == 2
        assert "URL" in result.stderr
        assert "Traceback" not in result.stderr

    def test_unreachable_broker_exits_1_without_leaking_the_password(self) -> None:
        """Nothing listens on the port: exit 1, the URL shown with *** for its password."""
        result = choreo_cmd(
            "run", "tests.fixtures.worker:service", "--broker", "amqp://guest:hunter2@127.0.0.1:1/"
        )
        assert result.returncode == 1
        assert "cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/" in result.stderr
        assert "hunter2" not in result.stderr
        assert "Traceback" not in result.stderr

    def test_debug_shows_the_traceback(self) -> None:
        """--debug is for developers: the traceback is printed."""
        result = choreo_cmd("run", "tests.fixtures.broken:service", "--debug")
        assert result.returncode != 0
        assert "Traceback" in result.stderr

    def test_version(self) -> None:
        """choreo --version prints the package version."""
        result = choreo_cmd("--version")
        assert result.returncode == 0
        assert result.stdout.strip() == f"choreo {choreo.__version__}"

    def test_console_script_is_installed(self) -> None:
        """The `choreo` command sits next to the interpreter."""
        script = Path(sys.executable).parent / "choreo"
        result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0
        assert "run" in result.stdout


class Worker:
    """`choreo run tests.fixtures.worker:service` in a subprocess."""

    def __init__(self, process: asyncio.subprocess.Process, out: Path) -> None:
        self.process = process
        self.out = out
        self.stderr: list[str] = []
        self._reader = asyncio.ensure_future(self._read())
        self.consuming = asyncio.Event()

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode()
            self.stderr.append(line)
            if "consuming" in line:
                self.consuming.set()

    def handled(self) -> list[dict[str, object]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines()]

    async def wait_handled(self, count: int) -> list[dict[str, object]]:
        async with asyncio.timeout(WAIT):
            while len(self.handled()) < count:
                if self.process.returncode is not None:
                    raise AssertionError("worker exited:\n" + "".join(self.stderr))
                await asyncio.sleep(0.05)
        return self.handled()

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            code = await self.process.wait()
            await self._reader
        return code


@pytest.fixture
def transport() -> str:
    return "rabbitmq"


@pytest.fixture
async def worker(make_bus: Buses, namespace: str, tmp_path: Path) -> AsyncIterator[Worker]:
    make_bus.extra_queues |= {f"{namespace}.worker{end}" for end in ("", ".dlq", ".suspect")}
    make_bus.extra_exchanges.add(f"{namespace}.ping")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "choreo",
        "run",
        "tests.fixtures.worker:service",
        "--broker",
        make_bus.url,
        "--namespace",
        namespace,
        "--shutdown-timeout",
        "10",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CHOREO_TEST_OUT": str(tmp_path / "handled.jsonl")},
    )
    running = Worker(process, tmp_path / "handled.jsonl")
    try:
        async with asyncio.timeout(WAIT):
            await running.consuming.wait()
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.broker
class TestRun:
    async def test_worker_consumes_and_exits_0_on_sigterm(
        self, worker: Worker, make_bus: Buses
    ) -> None:
        """Events published to the worker's event are handled; SIGTERM is a clean exit."""
        bus = await make_bus()
        ids = await asyncio.gather(*(bus.publish(Ping(n=i)) for i in range(20)))
        handled = await worker.wait_handled(20)
        assert sorted(h["id"] for h in handled) == sorted(ids)
        assert await worker.terminate() == 0
        stderr = "".join(worker.stderr)
        assert "Traceback" not in stderr
        assert f"{bus.namespace}.worker" in stderr  # says which queue it declared and consumes
        assert "guest:guest" not in stderr

    async def test_sigterm_lets_the_handler_in_flight_finish_and_ack(
        self, worker: Worker, make_bus: Buses
    ) -> None:
        """A handler running when SIGTERM arrives completes; its message is not left behind."""
        bus = await make_bus()
        await bus.publish(Ping(n=1, delay=1.0))
        started = Path(f"{worker.out}.started")
        async with asyncio.timeout(WAIT):
            while not started.exists():
                await asyncio.sleep(0.02)
        assert worker.handled() == []  # still sleeping in the handler
        assert await worker.terminate() == 0
        assert [h["n"] for h in worker.handled()] == [1]
        assert await ready_count(bus, f"{bus.namespace}.worker") == 0


@pytest.mark.broker
async def test_workers_share_the_queue_and_stop_together(
    make_bus: Buses, namespace: str, tmp_path: Path
) -> None:
    """--workers 2: two processes consume the same queue; SIGTERM stops both, exit 0."""
    out = tmp_path / "handled.jsonl"
    make_bus.extra_queues |= {f"{namespace}.worker{end}" for end in ("", ".dlq", ".suspect")}
    make_bus.extra_exchanges.add(f"{namespace}.ping")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "choreo", "run", "tests.fixtures.worker:service",
        "--workers", "2", "--namespace", namespace, "--prefetch", "1", "--concurrency", "1",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CHOREO_TEST_OUT": str(out), "CHOREO_BROKER_URL": make_bus.url},
    )  # fmt: skip
    try:
        assert process.stderr is not None
        consuming = 0
        async with asyncio.timeout(WAIT):
            while consuming < 2:
                consuming += b"consuming" in await process.stderr.readline()
        bus = await make_bus()
        await asyncio.gather(*(bus.publish(Ping(n=n, delay=0.02)) for n in range(60)))
        async with asyncio.timeout(WAIT):
            while not out.exists() or len(out.read_text().splitlines()) < 60:
                await asyncio.sleep(0.05)
        handled = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(h["n"] for h in handled) == list(range(60))
        assert len({h["pid"] for h in handled}) == 2
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_every_run_option_reaches_every_worker(tmp_path: Path) -> None:
    """--workers 2 with --log-level debug and --log-format json: both workers log debug
    lines as JSON (options reach the workers as parsed, not rebuilt as argv)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "choreo", "run", "tests.fixtures.worker:service",
        "--workers", "2", "--broker", "memory://", "--log-level", "debug",
        "--log-format", "json", "--shutdown-timeout", "1",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CHOREO_TEST_OUT": str(tmp_path / "out.jsonl")},
    )  # fmt: skip
    try:
        assert process.stderr is not None
        consuming = debug = 0
        async with asyncio.timeout(WAIT):
            while consuming < 2:
                line = await process.stderr.readline()
                assert line, "the workers stopped before consuming"
                entry = json.loads(line)
                consuming += "consuming" in entry["message"]
                debug += entry["message"].startswith("choreo run options: ")
        assert debug == 2  # each worker logs its options at DEBUG
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_workers_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    """kill -9 of the `choreo run --workers 2` parent: both workers are gone soon after,
    none is left consuming as an orphan."""
    log = tmp_path / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(  # noqa: ASYNC220 - kill -9 needs a plain child
            [sys.executable, "-m", "choreo", "run", "tests.fixtures.worker:service",
             "--workers", "2", "--broker", "memory://"],
            cwd=ROOT,
            stderr=stderr,
            env={**os.environ, "CHOREO_TEST_OUT": str(tmp_path / "out.jsonl")},
        )  # fmt: skip
    try:
        async with asyncio.timeout(WAIT):
            while log.read_text().count("consuming") < 2:
                await asyncio.sleep(0.05)
        started = log.read_text().split("started 2 workers: ", 1)[1].splitlines()[0]
        pids = [int(pid) for pid in started.split(", ")]
    finally:
        process.kill()
        process.wait()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except FileNotFoundError:
            return False

    try:
        async with asyncio.timeout(10):
            while any(alive(pid) for pid in pids):
                await asyncio.sleep(0.05)
    except TimeoutError:
        pass
    finally:
        orphans = [pid for pid in pids if alive(pid)]
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
    assert orphans == []


def test_a_password_is_never_printed_whatever_it_holds() -> None:
    """choreo run with a password holding unencoded '/', '#', '?' and ',': one line on
    stderr, exit 2, and no fragment of the password anywhere in the output."""
    password = "s3cr/et#pa?ss,word"
    result = choreo_cmd(
        "run", "tests.fixtures.worker:service", "--broker", f"amqp://guest:{password}@127.0.0.1:1/"
    )
    assert result.returncode == 2
    assert "must be percent-encoded" in result.stderr
    output = result.stdout + result.stderr
    for fragment in ("s3cr", "et#pa", "pa?ss", "ss,word"):
        assert fragment not in output


def test_run_takes_a_message_size_limit() -> None:
    """choreo run --max-message-size: documented, and refused when not a positive number."""
    assert "--max-message-size" in choreo_cmd("run", "--help").stdout
    result = choreo_cmd(
        "run", "tests.fixtures.worker:service", "--broker", "memory://", "--max-message-size", "0"
    )
    assert result.returncode == 2


async def exchange_exists(url: str, name: str) -> bool:
    """Asked of RabbitMQ directly (aio-pika, passive declare), not through choreo."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_exchange(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
        return True
    finally:
        await connection.close()


def test_publish_help_mentions_declare() -> None:
    """choreo publish --help documents --declare."""
    assert "--declare" in choreo_cmd("publish", "--help").stdout


async def publish_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(choreo_cmd, "publish", *args)


@pytest.mark.broker
class TestPublishToAMissingExchange:
    """`choreo publish` declares no exchange unless told to (--declare): a forgotten
    --namespace must not leave a stray top-level exchange on the broker."""

    async def test_a_missing_exchange_is_an_error_and_stays_missing(
        self, make_bus: Buses, namespace: str
    ) -> None:
        """Exit 1, one line naming the exchange and the way out; nothing declared."""
        exchange = f"{namespace}.order_placed"
        make_bus.extra_exchanges.add(exchange)  # deleted at the end, should it exist
        result = await publish_cmd(
            "order_placed", '{"n": 1}', "--broker", make_bus.url, "--namespace", namespace
        )
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        assert result.stderr == (
            f"choreo: error: exchange {exchange!r} does not exist on the broker (no service "
            "declared it; check --namespace, or pass --declare to create it)\n"
        )
        assert not await exchange_exists(make_bus.url, exchange)

    async def test_a_forgotten_namespace_leaves_no_stray_exchange(
        self, make_bus: Buses, namespace: str
    ) -> None:
        """The consumers live in a namespace; publishing without it: exit 1, no top-level
        exchange, nothing delivered to them."""
        event = unique("event")
        bus = await make_bus()
        queue = f"{namespace}.consumer"
        await bus.transport.declare_exchange(f"{namespace}.{event}", FANOUT)
        await bus.transport.declare_queue(QueueSpec(queue, ((f"{namespace}.{event}", ""),)))
        make_bus.extra_queues.add(queue)
        make_bus.extra_exchanges |= {f"{namespace}.{event}", event}
        result = await publish_cmd(event, '{"n": 1}', "--broker", make_bus.url)
        assert result.returncode == 1, result.stderr
        assert f"exchange {event!r} does not exist" in result.stderr
        assert "--namespace" in result.stderr
        assert not await exchange_exists(make_bus.url, event)
        assert await bus.transport.queue_size(queue) == 0

    async def test_an_existing_exchange_needs_no_declare(
        self, make_bus: Buses, namespace: str
    ) -> None:
        """The exchange its consumers declared: published, confirmed, delivered, exit 0."""
        bus = await make_bus()
        exchange, queue = f"{namespace}.ping", f"{namespace}.raw"
        await bus.transport.declare_exchange(exchange, FANOUT)
        await bus.transport.declare_queue(QueueSpec(queue, ((exchange, ""),)))
        make_bus.extra_queues.add(queue)
        make_bus.extra_exchanges.add(exchange)
        result = await publish_cmd(
            "ping", '{"n": 1}', "--broker", make_bus.url, "--namespace", namespace
        )
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.strip()) == 32  # the message id
        assert await bus.transport.queue_size(queue) == 1

    async def test_declare_creates_the_exchange_and_publishes(
        self, make_bus: Buses, namespace: str
    ) -> None:
        """--declare: declared and published as before (nothing bound yet: exit 3)."""
        exchange = f"{namespace}.order_placed"
        make_bus.extra_exchanges.add(exchange)
        result = await publish_cmd(
            "order_placed", '{"n": 1}', "--broker", make_bus.url, "--namespace", namespace,
            "--declare",
        )  # fmt: skip
        assert result.returncode == 3, result.stderr
        assert f"no queue is bound to exchange {exchange!r}" in result.stderr
        assert await exchange_exists(make_bus.url, exchange)
