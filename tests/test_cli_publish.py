"""`choreo publish`: one event from the command line, with the wire contract's properties."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import pytest
from typer.testing import CliRunner

from choreo import Context, Service, topology
from choreo.cli import app
from choreo.transports.base import FANOUT, QueueSpec

from .conftest import Buses
from .fixtures.worker import Ping
from .helpers import WAIT, Recorder
from .test_cli import ROOT, choreo_cmd
from .test_partition_routes import catalog, partition_of, taken

NOWHERE = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens: these must fail before connecting


class TestInput:
    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            (
                '{"n": 1',
                "the payload is not valid JSON: Expecting ',' delimiter (line 1, column 8)",
            ),
            ("[1, 2]", "the payload must be a JSON object (an event's fields), not list"),
            ("@/no/such/file.json", "cannot read '/no/such/file.json': No such file or directory"),
        ],
    )
    def test_bad_payload_is_one_line_and_exit_2(self, payload: str, message: str) -> None:
        """Bad JSON, not an object, a missing @file: exit 2, one line, no traceback."""
        result = choreo_cmd("publish", "ping", payload, "--broker", NOWHERE)
        assert result.returncode == 2
        assert result.stderr == f"choreo: error: {message}\n"
        assert result.stdout == ""

    def test_bad_json_in_a_file_names_the_file(self, tmp_path: Path) -> None:
        """@FILE with invalid JSON: the error names the file and the position."""
        path = tmp_path / "event.json"
        path.write_text('{"n": }')
        result = choreo_cmd("publish", "ping", f"@{path}", "--broker", NOWHERE)
        assert result.returncode == 2
        assert result.stderr == (
            f"choreo: error: {path} is not valid JSON: Expecting value (line 1, column 7)\n"
        )

    def test_bad_event_name_is_refused_before_connecting(self) -> None:
        """A name that cannot be an exchange name: exit 2."""
        result = choreo_cmd("publish", "no spaces", "{}", "--broker", NOWHERE)
        assert result.returncode == 2
        assert "invalid event name 'no spaces'" in result.stderr

    def test_unreachable_broker_exits_1(self) -> None:
        """A valid event, no broker: exit 1, the password hidden."""
        result = choreo_cmd("publish", "ping", '{"n": 1}', "--broker", NOWHERE)
        assert result.returncode == 1
        assert "cannot connect" in result.stderr
        assert "guest:guest" not in result.stderr


class TestNobodyBound:
    def test_publishing_where_nobody_listens_warns_and_exits_3(self) -> None:
        """--declare on a fresh memory broker: no queue bound, a warning on stderr, exit 3."""
        result = choreo_cmd("publish", "ping", '{"n": 1}', "--broker", "memory://", "--declare")
        assert result.returncode == 3
        assert result.stdout == ""
        assert result.stderr.startswith(
            "choreo: warning: no queue is bound to exchange 'ping': nobody consumes 'ping'"
        )


@pytest.mark.broker
@pytest.mark.parametrize("transport", ["rabbitmq"], indirect=True)
class TestOnRabbitMQ:
    async def test_event_reaches_a_consumer_with_the_wire_properties(
        self, make_bus: Buses, namespace: str, tmp_path: Path
    ) -> None:
        """Read from @FILE, delivered to a choreo service and to a raw queue: JSON body,
        persistent, message id printed, timestamp, type and correlation id."""
        seen = Recorder()
        service = Service("probe")

        @service.on(Ping)
        async def record(event: Ping, ctx: Context) -> None:
            seen.add((event, ctx))

        bus = await make_bus()
        await bus.start(service)
        raw = f"{namespace}.raw"
        await bus.transport.declare_queue(QueueSpec(raw, ((f"{namespace}.ping", ""),)))
        make_bus.extra_queues.add(raw)
        payload = tmp_path / "ping.json"
        payload.write_text('{"n": 7}')
        before = int(time.time())
        result = await asyncio.to_thread(
            choreo_cmd, "publish", "ping", f"@{payload}", "--broker", make_bus.url,
            "--namespace", namespace, "--correlation-id", "corr-7",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        message_id = result.stdout.strip()
        assert len(message_id) == 32
        assert set(message_id) <= set("0123456789abcdef")

        ((event, ctx),) = await seen.wait_for(1)
        assert event == Ping(n=7)
        assert (ctx.message_id, ctx.correlation_id) == (message_id, "corr-7")

        connection = await aio_pika.connect(make_bus.url)
        try:
            channel = await connection.channel()
            queue = await channel.get_queue(raw)
            incoming = await queue.get(timeout=WAIT)
            await incoming.ack()
        finally:
            await connection.close()
        assert json.loads(incoming.body) == {"n": 7}
        assert incoming.content_type == "application/json"
        assert incoming.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert (incoming.message_id, incoming.type) == (message_id, "ping")
        assert incoming.correlation_id == "corr-7"
        assert incoming.timestamp is not None
        assert before - 1 <= incoming.timestamp.timestamp() <= time.time() + 1

    async def test_nobody_bound_on_rabbitmq_exits_3(self, make_bus: Buses, namespace: str) -> None:
        """A fresh namespace with --declare: the exchange is declared, nothing is bound,
        exit 3."""
        make_bus.extra_exchanges.add(f"{namespace}.ping")
        result = await asyncio.to_thread(
            choreo_cmd, "publish", "ping", '{"n": 1}', "--broker", make_bus.url,
            "--namespace", namespace, "--declare",
        )  # fmt: skip
        assert result.returncode == 3, result.stderr
        assert f"no queue is bound to exchange '{namespace}.ping'" in result.stderr

    async def test_payload_from_standard_input(self, make_bus: Buses, namespace: str) -> None:
        """@- reads the JSON object from stdin."""
        bus = await make_bus()
        raw = f"{namespace}.raw"
        await bus.transport.declare_exchange(f"{namespace}.ping", FANOUT)
        await bus.transport.declare_queue(QueueSpec(raw, ((f"{namespace}.ping", ""),)))
        make_bus.extra_queues.add(raw)
        make_bus.extra_exchanges.add(f"{namespace}.ping")
        result = await asyncio.to_thread(
            _run_with_stdin, '{"n": 3}', "publish", "ping", "@-", "--broker", make_bus.url,
            "--namespace", namespace,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert await bus.transport.queue_size(raw) == 1


async def test_key_routes_to_the_keys_partition(make_bus: Buses, namespace: str) -> None:
    """--key: the routing key is the bucket of that key (not of the payload's field, which
    the CLI cannot know), so the event lands in that key's partition queue. In process
    (CliRunner, in a thread) on memory://, as a subprocess on RabbitMQ."""
    bus = await make_bus()
    await bus.declare(catalog())
    args = ["publish", "routes_test.step", '{"sku": "SKU-1", "seq": 0}', "--key", "SKU-7"]
    args += ["--broker", make_bus.url, "--namespace", namespace]
    if make_bus.url.startswith("memory://"):
        done = await asyncio.to_thread(CliRunner().invoke, app, args)
        code, output = done.exit_code, done.output
    else:
        proc = await asyncio.to_thread(choreo_cmd, *args)
        code, output = proc.returncode, proc.stdout + proc.stderr
    assert code == 0, output
    got = await taken(bus, 1)
    ((body, key),) = got[partition_of("SKU-7")]
    assert (body["sku"], key) == ("SKU-1", str(topology.bucket_of("SKU-7")))


def _run_with_stdin(text: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "choreo", *args],
        cwd=ROOT,
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
