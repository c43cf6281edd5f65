"""``choreo topology --prune`` (issue #12): the bindings of a service's queues that none of
its handlers (responders) wants any more are removed, and nothing else: on RabbitMQ with
rabbitmqctl, through the management API of a throw-away node, and on the in-memory broker;
``unbind_queue`` on both transports, also across a reconnect."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

import choreo
from choreo import ConfigurationError, ConnectionFailed, Event, Service, Unroutable, topology
from choreo.cli import app
from choreo.tooling import bindings
from choreo.transports import memory
from choreo.transports.base import FANOUT, Message, QueueSpec
from choreo.transports.memory import MemoryTransport

from .conftest import Buses, delete_on_rabbitmq, unique
from .helpers import WAIT
from .support.rabbit_nodes import RabbitNodes, started
from .support.tcp_proxy import FaultProxy
from .test_cli import choreo_cmd
from .test_cli_topology import bindings as broker_bindings


class PruneA(Event, name="prune_a"):
    n: int = 0


class PruneB(Event, name="prune_b"):
    n: int = 0


class AskA(Event, name="prune_ask_a"):
    n: int = 0


class AskB(Event, name="prune_ask_b"):
    n: int = 0


class Answer(Event, name="prune_answer"):
    n: int = 0


# two versions of one service: OLD handles A and B and answers both requests; NEW (the
# next deploy, or another service of the same name) handles A and answers AskA only
OLD = Service("shelf")
NEW = Service("shelf")


@OLD.on(PruneA)
async def old_a(event: PruneA) -> None: ...


@OLD.on(PruneB)
async def old_b(event: PruneB) -> None: ...


@OLD.responds(AskA)
async def old_ask_a(query: AskA) -> Answer:
    return Answer()


@OLD.responds(AskB)
async def old_ask_b(query: AskB) -> Answer:
    return Answer()


@NEW.on(PruneA)
async def new_a(event: PruneA) -> None: ...


@NEW.responds(AskA)
async def new_ask_a(query: AskA) -> Answer:
    return Answer()


OLD_TARGET = "tests.test_topology_prune:OLD"
NEW_TARGET = "tests.test_topology_prune:NEW"


def expected(ns: str, *, old: bool) -> set[tuple[str, str, str]]:
    """(exchange, queue, key) of the bindings OLD (or NEW) wants in namespace ``ns``."""
    found = {
        (f"{ns}.prune_a", f"{ns}.shelf", ""),
        (f"{ns}.choreo.requests", f"{ns}.shelf.requests", "prune_ask_a"),
    }
    if old:
        found |= {
            (f"{ns}.prune_b", f"{ns}.shelf", ""),
            (f"{ns}.choreo.requests", f"{ns}.shelf.requests", "prune_ask_b"),
        }
    return found


def stale_lines(ns: str) -> list[str]:
    return [
        f"{ns}.shelf <- {ns}.prune_b",
        f"{ns}.shelf.requests <- {ns}.choreo.requests  key=prune_ask_b",
    ]


def lines(text: str, prefix: str) -> list[str]:
    return [line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)]


async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(choreo_cmd, "topology", *args, env=env)


# ---- the shared RabbitMQ, bindings listed with rabbitmqctl --------------------------------


@pytest.fixture
async def declared(broker_url: str, namespace: str) -> AsyncIterator[str]:
    """The namespace; every exchange and queue OLD needs in it is deleted afterwards."""
    yield namespace
    plan = topology.plan([OLD], namespace)
    queues = {queue.name for queue in plan.queues}
    await delete_on_rabbitmq(broker_url, queues, {name for name, _ in plan.exchanges})


@pytest.mark.broker
async def test_prune_with_rabbitmqctl_removes_only_what_no_handler_wants(
    broker_url: str, declared: str
) -> None:
    """OLD declared, then NEW pruned (as the CLI, in a subprocess): the bindings of B and
    of AskB go, A's and AskA's stay, every exchange and queue stays; --dry-run removes
    nothing, and a second prune (with --apply) finds nothing stale."""
    ns = declared
    common = ("--broker", broker_url, "--namespace", ns)
    env = {"CHOREO_MANAGEMENT_URL": ""}  # rabbitmqctl, whatever the caller's environment
    applied = await cli(OLD_TARGET, "--apply", *common, env=env)
    assert applied.returncode == 0, applied.stderr
    assert await asyncio.to_thread(broker_bindings, ns) == expected(ns, old=True)

    dry = await cli(NEW_TARGET, "--prune", "--dry-run", *common, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "bindings listed by rabbitmqctl (vhost '/')" in dry.stdout
    assert lines(dry.stdout, "would unbind ") == stale_lines(ns)
    assert "dry run: 2 stale binding(s) left" in dry.stdout
    assert "unbound" not in dry.stdout
    assert await asyncio.to_thread(broker_bindings, ns) == expected(ns, old=True)

    pruned = await cli(NEW_TARGET, "--prune", *common, env=env)
    assert pruned.returncode == 0, pruned.stderr
    assert lines(pruned.stdout, "unbound ") == stale_lines(ns)
    assert "pruned 2 stale binding(s) on amqp://guest:***@" in pruned.stdout
    assert await asyncio.to_thread(broker_bindings, ns) == expected(ns, old=False)

    again = await cli(NEW_TARGET, "--apply", "--prune", *common, env=env)
    assert again.returncode == 0, again.stderr
    assert "declared on" in again.stdout
    assert "nothing stale: 2 queue(s) bound as the plan says" in again.stdout
    assert "unbound" not in again.stdout
    assert await asyncio.to_thread(broker_bindings, ns) == expected(ns, old=False)

    bus = await choreo.connect(broker_url, namespace=ns)
    try:
        for queue in topology.plan([OLD], ns).queues:  # every queue is still there
            assert await bus.transport.queue_size(queue.name) == 0
        exchanges = await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "list_exchanges", "-q", "--no-table-headers", "name"],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        ours = {name for name in exchanges.stdout.split() if name.startswith(ns + ".")}
        assert ours == {f"{ns}.prune_a", f"{ns}.prune_b", f"{ns}.choreo.requests"}
    finally:
        await bus.close()


@pytest.mark.broker
async def test_prune_in_process_leaves_other_queues_and_the_default_binding(
    broker_url: str, declared: str
) -> None:
    """The dead-letter queue (bound to B's exchange by hand here) and a queue outside the
    plan keep their bindings; the listing never holds the default exchange's binding."""
    ns = declared
    outsider = f"{ns}.outsider"
    bus = await choreo.connect(broker_url, namespace=ns)
    try:
        await bus.declare(OLD)
        dlq = topology.dlq_name(ns, "shelf")
        await bus.transport.declare_queue(QueueSpec(dlq, ((f"{ns}.prune_b", ""),)))
        await bus.transport.declare_queue(QueueSpec(outsider, ((f"{ns}.prune_b", ""),)))
        found = await bindings.stale_bindings(bus.transport, [NEW], ns, broker_url)
        assert [str(stale) for stale in found.stale] == stale_lines(ns)
        assert found.checked == (f"{ns}.shelf", f"{ns}.shelf.requests")
        assert found.missing == ()
        for stale in found.stale:
            await bus.transport.unbind_queue(stale.queue, stale.exchange, stale.routing_key)
        after = await asyncio.to_thread(broker_bindings, ns)
        assert after == expected(ns, old=False) | {
            (f"{ns}.prune_b", dlq, ""),
            (f"{ns}.prune_b", outsider, ""),
        }
    finally:
        await bus.close()
        await delete_on_rabbitmq(broker_url, {outsider}, set())


# ---- unbind_queue, on both transports ------------------------------------------------------


def _message() -> Message:
    return Message(body=b"{}", message_id="m-1", type="ping", content_type="application/json")


async def test_unbind_queue_removes_one_binding_and_tolerates_what_is_not_there(
    make_bus: Buses,
) -> None:
    """After unbind, a mandatory publish is unroutable; unbinding again, or from an exchange
    that does not exist, is no error; a queue that does not exist is a ConfigurationError,
    and the transport goes on working."""
    bus = await make_bus()
    transport, ns = bus.transport, bus.namespace
    exchange, queue = f"{ns}.x", f"{ns}.q"
    make_bus.extra_exchanges.add(exchange)
    make_bus.extra_queues.add(queue)
    await transport.declare_exchange(exchange, FANOUT)
    await transport.declare_queue(QueueSpec(queue, ((exchange, ""),)))
    await transport.publish(_message(), exchange, mandatory=True)
    await transport.unbind_queue(queue, exchange)
    with pytest.raises(Unroutable):
        await transport.publish(_message(), exchange, mandatory=True)
    await transport.unbind_queue(queue, exchange)
    await transport.unbind_queue(queue, f"{ns}.no-such-exchange", "key")
    with pytest.raises(ConfigurationError):
        await transport.unbind_queue(f"{ns}.no-such-queue", exchange)
    await transport.declare_queue(QueueSpec(queue, ((exchange, ""),)))  # bound again
    await transport.publish(_message(), exchange, mandatory=True)
    assert await transport.queue_size(queue) == 2


@pytest.fixture
async def proxy(broker_url: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(broker_url)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        yield proxy


@pytest.mark.broker
async def test_an_unbound_binding_stays_unbound_after_a_reconnect(
    proxy: FaultProxy, broker_url: str, declared: str
) -> None:
    """aio-pika binds again after a reconnect what was declared through it: not what
    unbind_queue removed (the service was declared twice, so two queue objects remember
    it). A, unbound behind the transport's back, comes back: the restore did run."""
    ns = declared
    parts = urlsplit(broker_url)
    auth = f"{parts.username}:{parts.password}@" if parts.username else ""
    url = f"amqp://{auth}127.0.0.1:{proxy.port}{parts.path or '/'}?heartbeat=1"
    bus = await choreo.connect(url, namespace=ns)
    other = await choreo.connect(broker_url, namespace=ns)
    try:
        await bus.declare(OLD)
        await bus.declare(OLD)
        await bus.transport.unbind_queue(f"{ns}.shelf", f"{ns}.prune_b")
        await other.transport.unbind_queue(f"{ns}.shelf", f"{ns}.prune_a")
        assert (f"{ns}.prune_a", f"{ns}.shelf", "") not in await asyncio.to_thread(
            broker_bindings, ns
        )
        proxy.cut()
        async with asyncio.timeout(WAIT):
            while (f"{ns}.prune_a", f"{ns}.shelf", "") not in await asyncio.to_thread(
                broker_bindings, ns
            ):
                await asyncio.sleep(0.2)
        assert (f"{ns}.prune_b", f"{ns}.shelf", "") not in await asyncio.to_thread(
            broker_bindings, ns
        )
    finally:
        await bus.close()
        await other.close()


# ---- the management API of a throw-away node -----------------------------------------------

VHOST = "shop/eu"  # a '/' in it: percent-encoded in both URLs


@pytest.fixture(scope="module")
def managed() -> Iterator[RabbitNodes]:
    """choreo-t6@localhost, AMQP on 5696, management API on 15696, vhost 'shop/eu'."""
    with started(1, first=6, plugins=("rabbitmq_management",)) as nodes:
        nodes.ctl(6, "add_vhost", VHOST)
        nodes.ctl(6, "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        yield nodes


def node_bindings(nodes: RabbitNodes, ns: str) -> set[tuple[str, str, str]]:
    listing = nodes.ctl(
        6, "list_bindings", "-p", VHOST, "-q", "--no-table-headers",
        "source_name", "destination_name", "routing_key",
    )  # fmt: skip
    rows = (line.split("\t") for line in listing.splitlines())
    return {(row[0], row[1], row[2]) for row in rows if row[0].startswith(ns + ".")}


@pytest.mark.broker
@pytest.mark.cluster
async def test_prune_through_the_management_api(managed: RabbitNodes) -> None:
    """The CLI lists bindings with GET /api/queues/shop%2Feu/<queue>/bindings (rabbitmqctl
    is off its PATH) and removes the stale ones; rabbitmqctl of the node confirms."""
    node = managed.node(6)
    ns = unique("mgmt")
    url = node.url.removesuffix("/") + "/shop%2Feu"
    no_ctl = {"PATH": str(Path(sys.executable).parent), "CHOREO_MANAGEMENT_URL": ""}
    common = ("--broker", url, "--namespace", ns)
    applied = await cli(OLD_TARGET, "--apply", *common)
    assert applied.returncode == 0, applied.stderr
    assert await asyncio.to_thread(node_bindings, managed, ns) == expected(ns, old=True)

    refused = await cli(NEW_TARGET, "--prune", *common, env=no_ctl)
    assert refused.returncode == 2
    assert "pass --management" in refused.stderr
    assert refused.stderr.count("\n") == 1

    pruned = await cli(NEW_TARGET, "--prune", *common, "--management", node.management_url)
    assert pruned.returncode == 0, pruned.stderr
    assert f"bindings listed by the management API at {node.management_url}" in pruned.stdout
    assert lines(pruned.stdout, "unbound ") == stale_lines(ns)
    assert await asyncio.to_thread(node_bindings, managed, ns) == expected(ns, old=False)

    again = await cli(
        NEW_TARGET, "--prune", *common, env={**no_ctl, "CHOREO_MANAGEMENT_URL": node.management_url}
    )
    assert again.returncode == 0, again.stderr
    assert "nothing stale: 2 queue(s)" in again.stdout


@pytest.mark.broker
@pytest.mark.cluster
async def test_management_api_errors_are_one_line(managed: RabbitNodes) -> None:
    """Wrong password (401), a URL that is not the API's (404), nothing listening: one
    line on stderr each, no traceback, no password."""
    node = managed.node(6)
    port = urlsplit(node.management_url).port
    common = (NEW_TARGET, "--prune", "--broker", node.url, "--namespace", unique("mgmt"))
    cases = [
        (f"http://guest:hunter2@127.0.0.1:{port}", 2, "refused user 'guest' (401)"),
        (f"{node.management_url}/not-the-api", 2, "is it the management API's URL"),
        ("http://127.0.0.1:1", 1, "cannot reach the management API at http://127.0.0.1:1"),
    ]
    for management, code, message in cases:
        result = await cli(*common, "--management", management)
        assert result.returncode == code, result.stderr
        assert message in result.stderr
        assert result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr
        assert "hunter2" not in result.stderr + result.stdout


# ---- the management API and rabbitmqctl, stubbed: what is parsed, what is asked ----------


class _Api(BaseHTTPRequestHandler):
    """A stand-in for the management API: canned answers by path, 404 otherwise."""

    answers: ClassVar[dict[str, tuple[int, bytes]]] = {}
    seen: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization", "")))
        status, body = self.answers.get(self.path, (404, b'{"error":"Object Not Found"}'))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[tuple[str, type[_Api]]]:
    handler = type("Api", (_Api,), {"answers": {}, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_management_listing_keeps_exchange_bindings_without_arguments(
    api: tuple[str, type[_Api]],
) -> None:
    base, handler = api
    listed = [
        {"source": "", "destination": "ns.q", "destination_type": "queue", "routing_key": "ns.q"},
        {"source": "ns.a", "destination": "ns.q", "destination_type": "queue", "routing_key": ""},
        {"source": "ns.r", "destination": "ns.q", "destination_type": "queue", "routing_key": "k"},
        {"source": "ns.h", "destination": "ns.q", "destination_type": "queue",
         "routing_key": "", "arguments": {"x-match": "all"}},
    ]  # fmt: skip
    handler.answers = {
        "/api/vhosts/shop%2Feu": (200, b"{}"),
        "/api/queues/shop%2Feu/ns.q/bindings": (200, json.dumps(listed).encode()),
    }
    url = "amqp://app:s3cret@127.0.0.1:1/shop%2Feu"
    found = await bindings.list_bindings(
        MemoryTransport(), url, ["ns.q", "ns.missing"], management=base + "/"
    )
    assert dict(found.bindings) == {"ns.q": frozenset({("ns.a", ""), ("ns.r", "k")})}
    assert found.source == f"the management API at {base}"
    assert [path for path, _ in handler.seen] == [
        "/api/vhosts/shop%2Feu",
        "/api/queues/shop%2Feu/ns.missing/bindings",
        "/api/queues/shop%2Feu/ns.q/bindings",
    ]
    assert {auth for _, auth in handler.seen} == {_basic("app", "s3cret")}

    handler.seen.clear()  # the management URL's own user wins
    own = base.replace("http://", "http://admin:pw@")
    await bindings.list_bindings(MemoryTransport(), url, ["ns.q"], management=own)
    assert {auth for _, auth in handler.seen} == {_basic("admin", "pw")}


async def test_management_errors(api: tuple[str, type[_Api]]) -> None:
    base, handler = api
    url = "amqp://app:s3cret@127.0.0.1:1/"
    with pytest.raises(ConfigurationError, match=r"has no vhost '/' \(404\)"):
        await bindings.list_bindings(MemoryTransport(), url, ["q"], management=base)
    handler.answers = {"/api/vhosts/%2F": (401, b"")}
    with pytest.raises(ConfigurationError, match=r"refused user 'app' \(401\)") as refused:
        await bindings.list_bindings(MemoryTransport(), url, ["q"], management=base)
    assert "s3cret" not in str(refused.value)
    handler.answers = {"/api/vhosts/%2F": (200, b"<html>not the API</html>")}
    with pytest.raises(ConnectionFailed, match="did not answer JSON"):
        await bindings.list_bindings(MemoryTransport(), url, ["q"], management=base)
    handler.answers = {"/api/vhosts/%2F": (403, b"")}
    with pytest.raises(ConfigurationError, match="needs the management"):
        await bindings.list_bindings(MemoryTransport(), url, ["q"], management=base)
    handler.answers = {"/api/vhosts/%2F": (500, b"")}
    with pytest.raises(ConnectionFailed, match="answered 500"):
        await bindings.list_bindings(MemoryTransport(), url, ["q"], management=base)
    with pytest.raises(ConfigurationError, match="invalid management URL"):
        await bindings.list_bindings(MemoryTransport(), url, ["q"], management="ftp://x")


def _fake_rabbitmqctl(directory: Path, output: str, code: int = 0) -> None:
    """A rabbitmqctl that notes its arguments, prints ``output`` and exits with ``code``."""
    (directory / "output").write_text(output)
    script = directory / "rabbitmqctl"
    script.write_text(
        f'#!/bin/sh\necho "$@" > "{directory}/args"\ncat "{directory}/output"\n'
        f'echo "some failure" >&2\nexit {code}\n'
    )
    script.chmod(0o755)


async def test_rabbitmqctl_listing_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default binding says the queue exists; exchange-to-exchange bindings, other
    queues and bindings with arguments are not the queue's choreo bindings."""
    rows = [
        ("", "ns.q", "queue", "ns.q", "[]"),
        ("ns.a", "ns.q", "queue", "", "[]"),
        ("ns.r", "ns.q", "queue", "k", "[]"),
        ("ns.h", "ns.q", "queue", "", '[{"x-match","all"}]'),
        ("ns.a", "ns.q", "exchange", "", "[]"),
        ("ns.a", "ns.other", "queue", "", "[]"),
        ("", "ns.empty", "queue", "ns.empty", "[]"),
    ]
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    _fake_rabbitmqctl(tmp_path, "".join("\t".join(row) + "\n" for row in rows))
    url = "amqp://guest:guest@127.0.0.1:1/shop%2Feu"
    queues = ["ns.q", "ns.empty", "ns.missing"]
    found = await bindings.list_bindings(MemoryTransport(), url, queues)
    assert dict(found.bindings) == {
        "ns.q": frozenset({("ns.a", ""), ("ns.r", "k")}),
        "ns.empty": frozenset(),
    }
    assert found.source == "rabbitmqctl (vhost 'shop/eu')"
    assert (tmp_path / "args").read_text().split()[:6] == [
        "list_bindings", "-p", "shop/eu", "-q", "--no-table-headers", "source_name",
    ]  # fmt: skip

    _fake_rabbitmqctl(tmp_path, "", code=69)
    with pytest.raises(ConnectionFailed, match="exited with 69: some failure"):
        await bindings.list_bindings(MemoryTransport(), url, queues)


def test_without_management_url_or_rabbitmqctl_listing_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bindings.shutil, "which", lambda name: None)
    with pytest.raises(ConfigurationError, match="pass --management"):
        bindings.listing_method("amqp://guest:guest@localhost/", None)
    assert bindings.listing_method("amqp://localhost/", "http://localhost:15672") == "management"
    assert bindings.listing_method("memory://x", None) == "memory"


def test_dry_run_goes_with_prune() -> None:
    result = choreo_cmd("topology", NEW_TARGET, "--dry-run", "--broker", "memory://")
    assert result.returncode == 2
    assert "--dry-run goes with --prune" in result.stderr


# ---- the in-memory broker --------------------------------------------------------------------


async def test_prune_on_the_memory_transport() -> None:
    """The same logic in process: stale bindings of the service and request queues go;
    the dead-letter queue, a queue outside the plan and a fanout binding with a key stay."""
    name = uuid.uuid4().hex
    url, ns = f"memory://{name}", "ns"
    try:
        async with choreo.connect(url, namespace=ns) as bus:
            transport = bus.transport
            assert isinstance(transport, MemoryTransport)
            await bus.declare(OLD)
            dlq = topology.dlq_name(ns, "shelf")
            await transport.declare_queue(QueueSpec(dlq, (("ns.prune_b", ""),)))
            await transport.declare_queue(QueueSpec("ns.outsider", (("ns.prune_b", ""),)))
            shelf = next(q for q in topology.plan([OLD], ns).queues if q.name == "ns.shelf")
            keyed = (("ns.prune_a", "any-key"),)  # a key, which a fanout exchange ignores
            await transport.declare_queue(QueueSpec(shelf.name, keyed, shelf.arguments))
            assert await transport.bindings("ns.shelf") == [
                ("ns.prune_a", ""), ("ns.prune_a", "any-key"), ("ns.prune_b", ""),
            ]  # fmt: skip

            found = await bindings.stale_bindings(transport, [NEW], ns, url)
            assert [str(stale) for stale in found.stale] == stale_lines(ns)
            assert found.source == "the in-memory broker"
            for stale in found.stale:
                await transport.unbind_queue(stale.queue, stale.exchange, stale.routing_key)
            assert await transport.bindings("ns.shelf") == [
                ("ns.prune_a", ""), ("ns.prune_a", "any-key"),
            ]  # fmt: skip
            assert await transport.bindings("ns.shelf.requests") == [
                ("ns.choreo.requests", "prune_ask_a")
            ]
            assert await transport.bindings(dlq) == [("ns.prune_b", "")]
            assert await transport.bindings("ns.outsider") == [("ns.prune_b", "")]
            assert set(transport.broker.exchanges) >= {"ns.prune_a", "ns.prune_b"}

            again = await bindings.stale_bindings(transport, [NEW], ns, url)
            assert again.stale == ()
            assert again.checked == ("ns.shelf", "ns.shelf.requests")
            with pytest.raises(ConfigurationError):
                await transport.bindings("ns.no-such-queue")
            other = await bindings.stale_bindings(transport, [NEW], "elsewhere", url)
            assert other.missing == ("elsewhere.shelf", "elsewhere.shelf.requests")
    finally:
        memory.forget(name)


def test_the_cli_prunes_an_in_memory_broker_of_this_process() -> None:
    """choreo topology --prune through the CLI, in process, on a memory:// broker that OLD
    was declared on: the same lines as on RabbitMQ."""
    name = uuid.uuid4().hex
    url = f"memory://{name}"

    async def declare_old() -> None:
        async with choreo.connect(url, namespace="ns") as bus:
            await bus.declare(OLD)

    try:
        asyncio.run(declare_old())
        runner = CliRunner()
        args = ["topology", NEW_TARGET, "--broker", url, "--namespace", "ns"]
        dry = runner.invoke(app, [*args, "--prune", "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert lines(dry.output, "would unbind ") == stale_lines("ns")
        pruned = runner.invoke(app, [*args, "--apply", "--prune"])
        assert pruned.exit_code == 0, pruned.output
        assert "bindings listed by the in-memory broker" in pruned.output
        assert lines(pruned.output, "unbound ") == stale_lines("ns")
        assert f"pruned 2 stale binding(s) on {url}" in pruned.output
        again = runner.invoke(app, [*args, "--prune"])
        assert "nothing stale: 2 queue(s) bound as the plan says" in again.output
        assert memory.broker(name).bindings("ns.shelf") == [("ns.prune_a", "")]
    finally:
        memory.forget(name)
