"""Fixtures shared by the suite.

Tests that need RabbitMQ take the ``broker_url`` fixture (directly or through
``transport="rabbitmq"``) and carry the ``broker`` marker. The broker is a testcontainers
RabbitMQ when a Docker engine answers, else ``CHOREO_TEST_BROKER_URL``, else the local
``amqp://guest:guest@127.0.0.1:5672/``. Without a broker those tests are skipped, except
in CI (``CI=true``), where a missing broker fails the run.

Tests that need PostgreSQL take ``pg_database`` (a throw-away database of their own, dropped
after the test) or ``db_url`` (once on SQLite, once on PostgreSQL) and carry the ``postgres``
marker. The server is ``CHOREO_TEST_POSTGRES_URL``, else the local
``postgresql://postgres@127.0.0.1:5432/choreo_test`` that ``.ci/run`` starts; skipped when it
does not answer, a failure in CI.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest

import choreo
from choreo.transports import memory

from .support import postgres

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DEFAULT_TEST_BROKER = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_TEST_POSTGRES = postgres.DEFAULT_URL


def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _probe(url: str) -> str | None:
    """None if an AMQP 0-9-1 broker answers at ``url``, else why not."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 5672), timeout=5) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            frame = sock.recv(7)
    except OSError as exc:
        return f"nothing answers at {parts.hostname}:{parts.port or 5672} ({exc})"
    if not frame or frame[0] != 1:  # a method frame: connection.start
        return f"{parts.hostname}:{parts.port or 5672} does not speak AMQP 0-9-1"
    return None


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """URL of a real RabbitMQ; skips (fails in CI) when there is none."""
    if _docker_engine() and "CHOREO_TEST_BROKER_URL" not in os.environ:
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13-management") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(container.port)
            yield f"amqp://guest:guest@{host}:{port}/"
        return
    url = os.environ.get("CHOREO_TEST_BROKER_URL", DEFAULT_TEST_BROKER)
    problem = _probe(url)
    if problem is not None:
        message = f"RabbitMQ needed for this test: {problem}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: a missing broker is a failure)", pytrace=False)
        pytest.skip(message)
    yield url


def require_postgres(url: str) -> None:
    """Skip (fail in CI) when no usable PostgreSQL answers at ``url``."""
    problem = postgres.probe(url)
    if problem is not None:
        message = (
            f"PostgreSQL needed for this test: {problem} (.ci/run starts one on 127.0.0.1:5432"
            " with database choreo_test; CHOREO_TEST_POSTGRES_URL points to another)"
        )
        if IN_CI:
            pytest.fail(f"{message} (CI=true: a missing database is a failure)", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """Admin URL of the test PostgreSQL (``CHOREO_TEST_POSTGRES_URL``); skips (fails in CI)
    when it does not answer. Tests create databases through it, never tables in it."""
    url = os.environ.get("CHOREO_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES)
    require_postgres(url)
    return url


@pytest.fixture
async def pg_database(postgres_url: str) -> AsyncIterator[str]:
    """SQLAlchemy async URL of a fresh database ``choreo_t_<hex>``, dropped after the test."""
    async with postgres.throwaway_database(postgres_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy async URL of a SQLite file in the test's temporary directory."""
    return f"sqlite+aiosqlite:///{tmp_path}/store.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """SQLAlchemy async URL of an empty database; store tests run once on each engine."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_database"))


def unique(prefix: str = "t") -> str:
    return f"choreo-test-{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    return unique(request.node.name[:20].replace("[", "-").replace("]", ""))


async def delete_on_rabbitmq(url: str, queues: set[str], exchanges: set[str]) -> None:
    """Delete what a test declared (queues first, then exchanges)."""
    connection = await aio_pika.connect(url)
    try:
        for name in queues:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.close()
        for name in exchanges:
            channel = await connection.channel()
            await channel.exchange_delete(name)
            await channel.close()
    finally:
        await connection.close()


@pytest.fixture(
    params=["memory", pytest.param("rabbitmq", marks=pytest.mark.broker)],
)
def transport(request: pytest.FixtureRequest) -> str:
    """The transport name; behaviour tests run once on each."""
    return str(request.param)


@pytest.fixture
def url(transport: str, request: pytest.FixtureRequest) -> str:
    if transport == "memory":
        return f"memory://{uuid.uuid4().hex}"
    return str(request.getfixturevalue("broker_url"))


class Buses:
    """Opens buses for one test; ``cleanup`` closes them and deletes what they declared."""

    def __init__(self, url: str, namespace: str, name: str) -> None:
        self.url = url
        self.namespace = namespace
        self.name = name
        self.buses: list[choreo.Bus] = []
        self.extra_queues: set[str] = set()
        self.extra_exchanges: set[str] = set()

    async def __call__(self, **kwargs: Any) -> choreo.Bus:
        kwargs.setdefault("namespace", self.namespace)
        kwargs.setdefault("connection_name", self.name)
        bus = await choreo.connect(self.url, **kwargs)
        self.buses.append(bus)
        return bus

    async def cleanup(self) -> None:
        for bus in self.buses:
            await bus.close()
        if self.url.startswith("amqp"):
            queues = self.extra_queues.union(*(b.declared_queues for b in self.buses))
            exchanges = self.extra_exchanges.union(*(b.declared_exchanges for b in self.buses))
            await delete_on_rabbitmq(self.url, queues, exchanges)
        else:
            memory.forget(urlsplit(self.url).netloc)


@pytest.fixture
async def make_bus(
    url: str, namespace: str, request: pytest.FixtureRequest
) -> AsyncIterator[Buses]:
    """Open buses on the test's transport and namespace (connection named after the test)."""
    buses = Buses(url, namespace, request.node.nodeid)
    yield buses
    await buses.cleanup()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_BROKER_TESTS_PASSED] = 0
    config.stash[_POSTGRES_TESTS_PASSED] = 0


_BROKER_TESTS_PASSED = pytest.StashKey[int]()
_POSTGRES_TESTS_PASSED = pytest.StashKey[int]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed:
        if item.get_closest_marker("broker"):
            item.config.stash[_BROKER_TESTS_PASSED] += 1
        if item.get_closest_marker("postgres"):
            item.config.stash[_POSTGRES_TESTS_PASSED] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI, a run in which no broker test passed is a failure, never green; so is one in
    which postgres tests were selected and none of them passed."""
    if not IN_CI or exitstatus != 0:
        return
    stash = session.config.stash
    if stash[_BROKER_TESTS_PASSED] == 0:
        print("\nCI=true but no test against RabbitMQ passed: failing the run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    selected = getattr(session, "items", [])  # after -m/-k deselection
    postgres_selected = any(item.get_closest_marker("postgres") for item in selected)
    if postgres_selected and stash[_POSTGRES_TESTS_PASSED] == 0:
        print("\nCI=true but no test against PostgreSQL passed: failing the run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
