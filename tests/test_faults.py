"""Fault injection on a real RabbitMQ: a worker killed with SIGKILL, a TCP proxy that cuts,
black-holes and refuses connections (tests/support/tcp_proxy.py), and a 3-node cluster whose
node holding the connection and the quorum-queue leader is killed
(tests/support/rabbit_nodes.py). In every case each confirmed event is processed at least
once. The tools belong to the repository: nothing beside the clone is needed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from choreo import Bus, ConnectionFailed, Context, Event, PublishError, Service, connect

from .conftest import Buses, delete_on_rabbitmq, unique
from .fixtures.worker import Ping
from .helpers import WAIT
from .support.rabbit_nodes import RabbitNodes, started
from .support.tcp_proxy import FaultProxy

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.broker


def tool(name: str) -> Path:
    """The repository's own stand-in for a tool that used to come from ../shared/tools.

    Only tests/test_observability.py still asks, for ``tcp-chaos.py``, which it runs as a
    script (``--listen/--target/--control``, then ``ctl PORT down|up``):
    tests/support/tcp_proxy.py takes that command line. New tests use FaultProxy in their
    own event loop instead."""
    return {"tcp-chaos.py": ROOT / "tests" / "support" / "tcp_proxy.py"}[name]


@pytest.fixture
def transport() -> str:
    return "rabbitmq"


class Stream(Event):
    n: int


def sink(seen: dict[int, int]) -> Service:
    service = Service("sink", prefetch=50)

    @service.on(Stream)
    async def count(event: Stream, ctx: Context) -> None:
        seen[event.n] = seen.get(event.n, 0) + 1

    return service


async def publish_stream(bus: Bus, count: int, confirmed: set[int], pace: float = 0.01) -> None:
    """Publish ``count`` events in small concurrent batches, noting each confirmed one."""

    async def one(n: int) -> None:
        await bus.publish(Stream(n=n))
        confirmed.add(n)

    for start in range(0, count, 10):
        await asyncio.gather(*(one(n) for n in range(start, min(count, start + 10))))
        await asyncio.sleep(pace)


async def wait_all(seen: dict[int, int], expected: set[int], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not expected <= seen.keys():
            await asyncio.sleep(0.05)


async def test_worker_killed_with_sigkill_mid_stream_loses_nothing(
    make_bus: Buses, namespace: str, tmp_path: Path
) -> None:
    """`choreo run` killed with SIGKILL while handling, then restarted: every event done."""
    out = tmp_path / "handled.jsonl"
    make_bus.extra_queues |= {f"{namespace}.worker{end}" for end in ("", ".dlq", ".suspect")}
    make_bus.extra_exchanges.add(f"{namespace}.ping")
    env = {**os.environ, "CHOREO_TEST_OUT": str(out)}
    command = [
        sys.executable, "-m", "choreo", "run", "tests.fixtures.worker:service",
        "--broker", make_bus.url, "--namespace", namespace,
    ]  # fmt: skip

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)

    def handled() -> set[object]:
        if not out.exists():
            return set()
        return {json.loads(line)["n"] for line in out.read_text().splitlines() if line}

    worker = start()
    try:
        bus = await make_bus()
        async with asyncio.timeout(WAIT):
            while True:  # wait for the worker's queue to exist
                try:
                    await bus.transport.queue_size(f"{namespace}.worker")
                    break
                except Exception:
                    await asyncio.sleep(0.1)
        await asyncio.gather(*(bus.publish(Ping(n=n, delay=0.01)) for n in range(400)))
        async with asyncio.timeout(WAIT):
            while len(handled()) < 60:
                await asyncio.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        before = len(handled())
        assert before < 400, "the worker finished before it could be killed"
        worker = start()
        async with asyncio.timeout(60):
            while handled() != set(range(400)):
                await asyncio.sleep(0.05)
        assert await bus.transport.queue_size(f"{namespace}.worker.dlq") == 0
    finally:
        worker.kill()
        worker.wait()


@pytest.fixture
async def proxy(broker_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in this event loop, in front of the test broker; always closed."""
    parts = urlsplit(broker_url)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        yield proxy


def through(proxy: FaultProxy, broker_url: str) -> str:
    parts = urlsplit(broker_url)
    auth = f"{parts.username}:{parts.password}@" if parts.username else ""
    return f"amqp://{auth}127.0.0.1:{proxy.port}{parts.path or '/'}?heartbeat=1"


async def fault_cut(proxy: FaultProxy) -> None:
    proxy.cut()


async def fault_black_hole(proxy: FaultProxy) -> None:
    proxy.black_hole()  # no RST, heartbeats stop; aiormq notices after ~(1+1)*3 s
    await asyncio.sleep(8)
    proxy.resume()


async def fault_refuse_then_accept(proxy: FaultProxy) -> None:
    proxy.refuse()  # connections cut, new ones reset on arrival
    await asyncio.sleep(3)
    proxy.accept()


Fault = Callable[[FaultProxy], Awaitable[None]]


@pytest.mark.parametrize(
    "fault", [fault_cut, fault_black_hole, fault_refuse_then_accept], ids=lambda f: f.__name__
)
async def test_connection_faults_lose_no_event_and_consumers_resume(
    proxy: FaultProxy, broker_url: str, namespace: str, fault: Fault
) -> None:
    """Publisher and consumer both go through the proxy; mid-stream the fault strikes.
    Every confirmed publish is consumed, including those published after the fault."""
    seen: dict[int, int] = {}
    confirmed: set[int] = set()
    bus = await connect(through(proxy, broker_url), namespace=namespace, publish_timeout=60)
    try:
        await bus.start(sink(seen))
        stream = asyncio.ensure_future(publish_stream(bus, 600, confirmed, pace=0.02))
        async with asyncio.timeout(WAIT):
            while len(confirmed) < 150:
                await asyncio.sleep(0.01)
        await fault(proxy)
        async with asyncio.timeout(90):
            await stream
        assert confirmed == set(range(600))
        await wait_all(seen, confirmed, timeout=60)
    finally:
        await bus.close()
        await delete_on_rabbitmq(broker_url, bus.declared_queues, bus.declared_exchanges)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitNodes]:
    """A fresh 3-node cluster choreo-t{1,2,3}@localhost on 127.0.0.1:5691-5693, always
    stopped and wiped afterwards (skipped without rabbitmq-server, failed in CI)."""
    with started(3, first=1) as nodes:
        yield nodes


@pytest.mark.cluster
async def test_cluster_node_with_connection_and_leader_killed_loses_nothing(
    cluster: RabbitNodes,
) -> None:
    """Quorum queues, three URLs; node 1 holds the connection and the queue leader and is
    SIGKILLed mid-stream, then restarted: every confirmed event is consumed."""
    seen: dict[int, int] = {}
    confirmed: set[int] = set()
    namespace = unique("cluster")
    bus = await connect(
        ",".join(f"{url}?heartbeat=2" for url in cluster.urls),
        namespace=namespace,
        queue_type="quorum",
        publish_timeout=90,
    )
    try:
        await bus.start(sink(seen))  # declared through node 1: the leader is there
        stream = asyncio.ensure_future(publish_stream(bus, 1500, confirmed, pace=0.02))
        async with asyncio.timeout(WAIT):
            while len(confirmed) < 300:
                await asyncio.sleep(0.01)
        await asyncio.to_thread(cluster.kill, 1)
        await asyncio.sleep(3)
        await asyncio.to_thread(cluster.restart, 1)
        async with asyncio.timeout(120):
            await stream
        assert confirmed == set(range(1500))
        await wait_all(seen, confirmed, timeout=90)
    finally:
        await bus.close()


async def test_publish_during_a_long_outage_raises_after_publish_timeout(
    proxy: FaultProxy, broker_url: str, namespace: str
) -> None:
    """The broker stays unreachable: publish raises PublishError, never returns unconfirmed."""
    bus = await connect(through(proxy, broker_url), namespace=namespace, publish_timeout=2)
    try:
        await bus.publish(Stream(n=0))  # declares the exchange while the broker is there
        proxy.refuse()
        async with asyncio.timeout(WAIT):
            with pytest.raises(PublishError, match=r"no confirm .* within 2"):
                await bus.publish(Stream(n=1))
        proxy.accept()
    finally:
        await bus.close()
        await delete_on_rabbitmq(broker_url, set(), bus.declared_exchanges)


async def test_first_reachable_url_of_a_list_is_used(broker_url: str, namespace: str) -> None:
    """Several URLs: a dead first node does not stop connect(); a dead list is one clear error."""
    dead = "amqp://guest:guest@127.0.0.1:1/"
    async with connect(f"{dead},{broker_url}", namespace=namespace) as bus:
        assert await bus.transport.queue_size("amq.rabbitmq.reply-to") == 0  # it talks
    with pytest.raises(ConnectionFailed) as info:
        async with connect(f"{dead},amqp://guest:secret@127.0.0.1:2/"):
            pass
    assert "127.0.0.1:1" in str(info.value)
    assert "127.0.0.1:2" in str(info.value)
    assert "secret" not in str(info.value)
