"""The SKU demo: the whole story in-process on memory://, and as separate `choreo run`
processes on RabbitMQ, including a kill -9 of catalog mid-feed."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from choreo import Service, topology
from services import catalog, inventory, wishlist
from services.events import SkuReceived
from services.warehouse import SAMPLE, feed, read_csv

from .conftest import Buses
from .helpers import WAIT, idle

ROOT = Path(__file__).resolve().parent.parent
SERVICES: list[Service] = [inventory.service, catalog.service, wishlist.service]

EXPECTED_AVAILABLE = {"SKU-1": 5, "SKU-2": 4, "SKU-3": 0, "SKU-4": 3, "SKU-5": 3, "SKU-6": 0}
EXPECTED_AVAILABLE["SKU-7"] = 6
EXPECTED_NOTIFIED = {("alice", "SKU-2"), ("bob", "SKU-2"), ("alice", "SKU-4"), ("carol", "SKU-5")}


def query(data: Path, service: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of a service's database, read-only; none before the service created it."""
    path = data / f"{service}.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        db.close()


def available(data: Path) -> dict[object, object]:
    return dict(query(data, "inventory", "SELECT sku, available FROM availability"))


def catalog_flags(data: Path) -> dict[object, object]:
    return dict(query(data, "catalog", "SELECT sku, available FROM products"))


def notified(data: Path) -> list[tuple[object, ...]]:
    return query(data, "wishlist", "SELECT user, sku FROM notifications ORDER BY user, sku")


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh data directory; the services' cached connections are reopened there."""
    monkeypatch.setenv("CHOREO_DEMO_DATA", str(tmp_path))
    for module in (inventory, catalog, wishlist):
        module.db.cache_clear()
    yield tmp_path
    for module in (inventory, catalog, wishlist):
        if module.db.cache_info().currsize:
            module.db().close()
        module.db.cache_clear()


async def settle(expected_handled: int, data: Path) -> None:
    """Wait until inventory, catalog and wishlist all saw the last version of every SKU."""
    async with asyncio.timeout(WAIT):
        while True:
            versions = dict(query(data, "inventory", "SELECT sku, version FROM versions"))
            seen = {
                sku: v
                for sku, v in query(data, "catalog", "SELECT sku, version FROM products")
                if sku in versions
            }
            state = dict(query(data, "wishlist", "SELECT sku, version FROM sku_state"))
            recalculated = dict(query(data, "inventory", "SELECT sku, version FROM availability"))
            if versions and seen == versions == state == recalculated:
                return
            await asyncio.sleep(0.05)


async def applied_everywhere(sku: str, data: Path) -> None:
    """Wait until inventory, catalog and wishlist each handled the ``sku_processed`` of ``sku``."""
    async with asyncio.timeout(WAIT):
        while not (
            sku in available(data)
            and sku in catalog_flags(data)
            and sku in dict(query(data, "wishlist", "SELECT sku, version FROM sku_state"))
        ):
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("transport", ["memory"], indirect=True)
class TestStoryInMemory:
    async def test_sample_feed_reaches_every_database(self, make_bus: Buses, data: Path) -> None:
        """After the sample, each service's own database holds the expected rows."""
        bus = await make_bus()
        await bus.start(*SERVICES)
        await feed(bus, read_csv(SAMPLE))
        await settle(36, data)
        assert available(data) == EXPECTED_AVAILABLE
        flags = catalog_flags(data)
        assert flags == {sku: int(n > 0) for sku, n in EXPECTED_AVAILABLE.items()}
        assert set(notified(data)) == EXPECTED_NOTIFIED
        assert len(notified(data)) == len(EXPECTED_NOTIFIED)

    async def test_feeding_the_same_file_twice_notifies_nobody_twice(
        self, make_bus: Buses, data: Path
    ) -> None:
        """Handlers are idempotent: a repeated feed changes no state and sends nothing."""
        bus = await make_bus()
        await bus.start(*SERVICES)
        await feed(bus, read_csv(SAMPLE))
        await settle(36, data)
        first = notified(data)
        await feed(bus, read_csv(SAMPLE))
        # A SKU nobody wishes for, fed after the repeat: once every service applied it and
        # no handler is left in flight, the repeat was handled everywhere.
        await feed(bus, [SkuReceived(sku="SENTINEL", quantity=1, warehouse="barrier")])
        await applied_everywhere("SENTINEL", data)
        await idle(bus)
        await settle(72, data)
        assert notified(data) == first

    async def test_going_from_zero_to_some_notifies_each_wisher_once(
        self, make_bus: Buses, data: Path
    ) -> None:
        """SKU-3 (wished by carol) goes 0 -> 5: exactly one new notification, for carol."""
        bus = await make_bus()
        await bus.start(*SERVICES)
        await feed(bus, read_csv(SAMPLE))
        await settle(36, data)
        await feed(bus, [SkuReceived(sku="SKU-3", quantity=5, warehouse="south")])
        await feed(bus, [SkuReceived(sku="SKU-3", quantity=6, warehouse="south")])
        await settle(44, data)
        assert available(data)["SKU-3"] == 6 + 2 - 2
        new = set(notified(data)) - EXPECTED_NOTIFIED
        assert new == {("carol", "SKU-3")}
        assert len(notified(data)) == len(EXPECTED_NOTIFIED) + 1


def test_demo_command_prints_the_trace_and_the_state(tmp_path: Path) -> None:
    """`python -m services.demo` (what make demo runs) exits 0 and shows the story."""
    result = subprocess.run(
        [sys.executable, "-m", "services.demo", "--fresh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CHOREO_DEMO_DATA": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "36 events handled" in result.stdout
    assert "emailed alice@example.com, bob@example.com: back in stock" in result.stdout
    assert "wishlist: notifications sent" in result.stdout
    assert result.stderr == ""


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_is_valid() -> None:
    """docker-compose parses the stack (no Docker engine needed for `config -q`)."""
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


class Stack:
    """The demo services as separate `choreo run` processes on one RabbitMQ namespace."""

    def __init__(self, url: str, namespace: str, data: Path) -> None:
        self.env = {
            **os.environ,
            "CHOREO_BROKER_URL": url,
            "CHOREO_NAMESPACE": namespace,
            "CHOREO_DEMO_DATA": str(data),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = data / "logs"
        self.logs.mkdir()

    def start(self, name: str) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "choreo", "run", f"services.{name}:service"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=log,
            )

    async def wait_consuming(self, name: str) -> None:
        async with asyncio.timeout(WAIT):
            while b"consuming" not in (self.logs / f"{name}.log").read_bytes():
                assert self.processes[name].poll() is None, self.log(name)
                await asyncio.sleep(0.05)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def feed(self, *args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "services.warehouse", "feed", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "all confirmed" in result.stdout

    def stop(self) -> dict[str, int]:
        """SIGTERM, requesters first: inventory answers until catalog and wishlist are done."""
        codes = {}
        for name in sorted(self.processes, key=lambda name: name == "inventory"):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                codes[name] = process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes


@pytest.mark.broker
@pytest.mark.parametrize("transport", ["rabbitmq"], indirect=True)
async def test_story_on_rabbitmq_with_a_process_per_service_and_a_kill_9(
    make_bus: Buses, namespace: str, tmp_path: Path
) -> None:
    """Separate `choreo run` processes fed by the warehouse command reach the same state;
    catalog killed with SIGKILL mid-feed and restarted ends consistent with inventory."""
    plan = topology.plan(SERVICES, namespace)
    make_bus.extra_queues |= {queue.name for queue in plan.queues}
    make_bus.extra_exchanges |= {name for name, _ in plan.exchanges}
    stack = Stack(make_bus.url, namespace, tmp_path)
    try:
        for name in ("inventory", "catalog", "wishlist"):
            stack.start(name)
        for name in ("inventory", "catalog", "wishlist"):
            await stack.wait_consuming(name)
        stack.feed(str(SAMPLE))
        await settle(36, tmp_path)
        assert available(tmp_path) == EXPECTED_AVAILABLE
        assert catalog_flags(tmp_path) == {s: int(n > 0) for s, n in EXPECTED_AVAILABLE.items()}
        assert set(notified(tmp_path)) == EXPECTED_NOTIFIED

        # a long feed, and catalog dies in the middle of it
        big = tmp_path / "big.csv"
        lines = ["sku,quantity,warehouse"]
        lines += [f"BULK-{i % 150},{(i * 7) % 5},w{i % 3}" for i in range(600)]
        big.write_text("\n".join(lines) + "\n")
        feeding = asyncio.ensure_future(asyncio.to_thread(stack.feed, str(big)))
        async with asyncio.timeout(WAIT):
            while len(catalog_flags(tmp_path)) < 7 + 20:
                await asyncio.sleep(0.01)
        stack.processes["catalog"].send_signal(signal.SIGKILL)
        stack.processes["catalog"].wait(timeout=30)
        await feeding
        stack.start("catalog")
        await settle(0, tmp_path)
        inventory_now = available(tmp_path)
        flags = catalog_flags(tmp_path)
        assert len(inventory_now) == 7 + 150
        assert {sku: flags.get(sku) for sku in inventory_now} == {
            sku: int(n > 0)
            for sku, n in inventory_now.items()  # type: ignore[operator]
        }
    finally:
        codes = stack.stop()
    assert codes == {"inventory": 0, "catalog": 0, "wishlist": 0}


@pytest.mark.broker
@pytest.mark.parametrize("transport", ["rabbitmq"], indirect=True)
def test_demo_on_rabbitmq_never_prints_the_password(
    make_bus: Buses, namespace: str, tmp_path: Path
) -> None:
    """`python -m services.demo --broker amqp://user:password@...`: the story runs, and no
    line of its output holds the password (the banner used to print the URL whole)."""
    plan = topology.plan(SERVICES, namespace)
    make_bus.extra_queues |= {queue.name for queue in plan.queues}
    make_bus.extra_exchanges |= {name for name, _ in plan.exchanges}
    parts = urlsplit(make_bus.url)
    assert parts.password, "the test broker URL carries a password"
    result = subprocess.run(
        [sys.executable, "-m", "services.demo", "--fresh", "--broker", make_bus.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CHOREO_DEMO_DATA": str(tmp_path), "CHOREO_NAMESPACE": namespace},
    )
    assert result.returncode == 0, result.stderr
    assert "36 events handled" in result.stdout
    assert f":{parts.password}@" not in result.stdout + result.stderr
    assert ":***@" in result.stdout


def test_demo_piped_into_head_finishes_and_fails_no_handler(tmp_path: Path) -> None:
    """`make demo | head -5`: the reader goes away after 5 lines; the demo still runs its
    story to the end and exits 0, and no handler fails with BrokenPipeError (printing the
    trace from inside handlers used to dead-letter every event and hang for 60 s)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.demo", "--fresh"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CHOREO_DEMO_DATA": str(tmp_path)},
    )
    assert process.stdout is not None
    for _ in range(5):
        process.stdout.readline()
    process.stdout.close()  # what head does after its 5 lines
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert b"BrokenPipeError" not in stderr
    assert b"dead-lettered" not in stderr
