"""Per-event logs, the observer hook, Prometheus metrics and /healthz."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from choreo import Context, Event, Retry, Service
from choreo.observability.observer import Observer
from choreo.transports.base import Message

from .conftest import Buses
from .fixtures.worker import Ping
from .helpers import WAIT, Recorder
from .test_faults import tool

ROOT = Path(__file__).resolve().parent.parent


class Watched(Event):
    sku: str


class Recording(Observer):
    def __init__(self) -> None:
        self.outcomes = Recorder()
        self.publishes: list[str] = []

    def handled(self, service, event, outcome, duration, attempt, message_id, correlation_id):  # type: ignore[no-untyped-def]
        self.outcomes.add((service, event, outcome, attempt))

    def published(self, event: str, confirm_seconds: float) -> None:
        self.publishes.append(event)


class TestObserver:
    async def test_every_settled_message_is_reported_with_its_outcome(
        self, make_bus: Buses
    ) -> None:
        """ok, dead-lettered after its attempts, poison, and every confirmed publish."""
        observer = Recording()
        service = Service("catalog", retry=Retry(attempts=2, delay=0.01))

        @service.on(Watched)
        async def handle(event: Watched, ctx: Context) -> None:
            if event.sku == "bad":
                raise RuntimeError("no")

        bus = await make_bus(observer=observer)
        await bus.start(service)
        await bus.publish(Watched(sku="good"))
        await bus.publish(Watched(sku="bad"))
        await bus.transport.publish(Message(body=b"{oops"), f"{bus.namespace}.watched")
        outcomes = await observer.outcomes.wait_for(3)
        assert sorted(outcomes) == sorted(
            [
                ("catalog", "watched", "ok", 1),
                ("catalog", "watched", "dead-lettered", 2),
                ("catalog", "watched", "poison", 0),
            ]
        )
        assert observer.publishes == ["watched", "watched"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def start_worker(
    make_bus: Buses, namespace: str, tmp_path: Path, broker: str, *extra: str
) -> asyncio.subprocess.Process:
    make_bus.extra_queues |= {f"{namespace}.worker{end}" for end in ("", ".dlq", ".suspect")}
    make_bus.extra_exchanges.add(f"{namespace}.ping")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "choreo", "run", "tests.fixtures.worker:service",
        "--namespace", namespace, *extra,
        cwd=ROOT, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CHOREO_TEST_OUT": str(tmp_path / "out"), "CHOREO_BROKER_URL": broker},
    )  # fmt: skip
    return process


async def read_until(process: asyncio.subprocess.Process, needle: str, lines: list[str]) -> str:
    assert process.stderr is not None
    async with asyncio.timeout(WAIT):
        while True:
            line = (await process.stderr.readline()).decode()
            assert line, "worker exited:\n" + "".join(lines)
            lines.append(line)
            if needle in line:
                return line


@pytest.mark.broker
@pytest.mark.parametrize("transport", ["rabbitmq"], indirect=True)
async def test_json_logs_have_one_line_per_handled_event(
    make_bus: Buses, namespace: str, tmp_path: Path
) -> None:
    """--log-format json: every line is JSON; each handled event has its fields."""
    process = await start_worker(
        make_bus, namespace, tmp_path, make_bus.url, "--log-format", "json"
    )
    lines: list[str] = []
    try:
        await read_until(process, "consuming", lines)
        bus = await make_bus()
        sent = await bus.publish(Ping(n=1), correlation_id="corr-9")
        line = await read_until(process, '"outcome"', lines)
        entry = json.loads(line)
        assert entry["service"] == "worker"
        assert entry["event"] == "ping"
        assert entry["message_id"] == sent
        assert entry["correlation_id"] == "corr-9"
        assert entry["attempt"] == 1
        assert entry["outcome"] == "ok"
        assert entry["duration_ms"] >= 0
        process.terminate()
        assert process.stderr is not None
        lines += (await process.stderr.read()).decode().splitlines(keepends=True)
        assert await process.wait() == 0
        for text in lines:
            json.loads(text)  # every line is JSON
        assert "guest:guest" not in "".join(lines)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.broker
@pytest.mark.parametrize("transport", ["rabbitmq"], indirect=True)
async def test_metrics_and_healthz_during_a_real_run(
    make_bus: Buses, namespace: str, tmp_path: Path, broker_url: str
) -> None:
    """/metrics counts handled events; /healthz is 200, and 503 once the broker is gone."""
    from urllib.parse import urlsplit

    chaos_port, control_port = free_port(), free_port()
    target = urlsplit(broker_url)
    proxy = await asyncio.create_subprocess_exec(
        sys.executable, str(tool("tcp-chaos.py")), "--listen", str(chaos_port),
        "--target", f"{target.hostname}:{target.port or 5672}", "--control", str(control_port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    process = None
    try:
        assert proxy.stdout is not None
        assert b"READY" in await asyncio.wait_for(proxy.stdout.readline(), WAIT)
        via_proxy = broker_url.replace(
            f"{target.hostname}:{target.port or 5672}", f"127.0.0.1:{chaos_port}"
        )
        via_proxy += ("&" if "?" in via_proxy else "?") + "heartbeat=1"
        port = free_port()
        process = await start_worker(
            make_bus, namespace, tmp_path, via_proxy,
            "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
        )  # fmt: skip
        lines: list[str] = []
        await read_until(process, "serving /metrics", lines)
        await read_until(process, "consuming", lines)
        base = f"http://127.0.0.1:{port}"
        assert await asyncio.to_thread(get, f"{base}/healthz") == (200, "ok\n")
        bus = await make_bus()
        await asyncio.gather(*(bus.publish(Ping(n=n)) for n in range(5)))
        async with asyncio.timeout(WAIT):
            while True:
                status, text = await asyncio.to_thread(get, f"{base}/metrics")
                if 'choreo_handled_total{event="ping",outcome="ok",service="worker"} 5.0' in text:
                    break
                await asyncio.sleep(0.1)
        assert status == 200
        assert "choreo_handler_duration_seconds_bucket" in text
        assert 'choreo_in_flight{service="worker"} 0.0' in text
        control = [sys.executable, str(tool("tcp-chaos.py")), "ctl", str(control_port)]
        down = await asyncio.create_subprocess_exec(*control, "down")
        await down.wait()
        async with asyncio.timeout(WAIT):
            while (await asyncio.to_thread(get, f"{base}/healthz"))[0] != 503:
                await asyncio.sleep(0.1)
        up = await asyncio.create_subprocess_exec(*control, "up")
        await up.wait()
        async with asyncio.timeout(WAIT):
            while (await asyncio.to_thread(get, f"{base}/healthz"))[0] != 200:
                await asyncio.sleep(0.1)
        process.terminate()
        assert await process.wait() == 0
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        proxy.terminate()
        await proxy.wait()


@pytest.mark.broker
@pytest.mark.parametrize("transport", ["rabbitmq"], indirect=True)
async def test_plain_logs_carry_the_ids_of_the_message_handled(
    make_bus: Buses, namespace: str, tmp_path: Path
) -> None:
    """Plain text logs: the handled line and the handler's own log line (a plain
    logging.getLogger(...).info in the handler) end with the service, event, message id
    and correlation id, so one choreography can be followed by its id."""
    process = await start_worker(make_bus, namespace, tmp_path, make_bus.url)
    lines: list[str] = []
    try:
        await read_until(process, "consuming", lines)
        bus = await make_bus()
        sent = await bus.publish(Ping(n=1), correlation_id="corr-77")
        own = await read_until(process, "pong 1", lines)
        assert own.rstrip().endswith(f"[worker ping {sent} corr=corr-77]")
        handled = await read_until(process, "handled ping", lines)
        assert handled.rstrip().endswith("corr=corr-77]")
        first = await bus.publish(Ping(n=2))  # no correlation id: the chain's id is its own
        own = await read_until(process, "pong 2", lines)
        assert own.rstrip().endswith(f"corr={first}]")
        assert "None" not in "".join(lines)
    finally:
        process.terminate()
        await process.wait()


class OrderPaid(Event, name="metrics_test.order_paid"):
    order: str


class Receipted(Event, name="metrics_test.receipted"):
    order: str


async def test_outbox_and_inbox_metrics(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored service on memory:// and SQLite: choreo_outbox_relayed_total{store} counts
    what its relay published, choreo_outbox_pending{store} what waits (a delayed row), and a
    redelivery the inbox knows is choreo_inbox_duplicates_total{service} and
    choreo_handled_total{outcome="duplicate"}."""
    import uuid

    from sqlalchemy.ext.asyncio import create_async_engine

    from choreo import connect, topology, wire
    from choreo.observability.metrics import PrometheusObserver
    from choreo.sql import Store, relay
    from choreo.transports import memory

    monkeypatch.setattr(relay, "HOUSEKEEPING", 0.05)  # the pending gauge, read every 5 s
    store = Store(create_async_engine(sqlite_url), name="shopdb")
    await store.create_tables()
    observer, receipts = PrometheusObserver(), Recorder()
    billing, mailer = Service("billing", store=store), Service("mailer")

    @billing.on(OrderPaid)
    async def bill(event: OrderPaid, ctx: Context) -> None:
        await ctx.publish(Receipted(order=event.order))

    @mailer.on(Receipted)
    async def mail(event: Receipted) -> None:
        receipts.add(event.order)

    async def metric(line: str) -> str:
        async with asyncio.timeout(WAIT):
            while line not in (text := observer.exposition().decode()):
                await asyncio.sleep(0.02)
        return text

    broker = uuid.uuid4().hex
    try:
        async with connect(f"memory://{broker}", observer=observer) as bus:
            await bus.start(billing, mailer)
            message = wire.encode(OrderPaid(order="o-1"))
            exchange = topology.exchange_name(bus.namespace, "metrics_test.order_paid")
            await bus.transport.publish(message, exchange)
            assert await receipts.wait_for(1) == ["o-1"]
            await metric('choreo_outbox_relayed_total{store="shopdb"} 1.0')
            await metric('choreo_outbox_pending{store="shopdb"} 0.0')
            await bus.transport.publish(message, exchange)  # the same message again
            text = await metric('choreo_inbox_duplicates_total{service="billing"} 1.0')
            assert (
                'choreo_handled_total{event="metrics_test.order_paid",outcome="duplicate",'
                'service="billing"} 1.0' in text
            )
            async with store.transaction() as tx:  # store.publish: tx.publish drops the delay
                await store.publish(tx.session, Receipted(order="later"), delay=3600)
            await metric('choreo_outbox_pending{store="shopdb"} 1.0')
            assert (
                'choreo_outbox_relayed_total{store="shopdb"} 1.0' in observer.exposition().decode()
            )
            assert receipts.items == ["o-1"]
    finally:
        memory.forget(broker)
        await store.engine.dispose()
