"""The fault-injection tools of tests/support work: the TCP proxy against a local echo server
(milliseconds, no broker), throw-away RabbitMQ nodes (marked ``cluster``: a node boots
in ≈5 s), and throw-away PostgreSQL databases (marked ``postgres``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from . import conftest
from .support import postgres, rabbit_nodes, tcp_proxy
from .support.rabbit_nodes import RabbitNodes, answers_amqp, started
from .support.tcp_proxy import FaultProxy

QUIET = 0.3  # seconds without bytes that count as "nothing flows"


class Echo:
    """A loopback echo server that remembers how many connections it saw."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            with contextlib.suppress(OSError):
                for _ in range(10_000):  # bounded: far more chunks than any test sends
                    data = await reader.read(65536)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    echo = Echo()
    port = await echo.start()
    yield port
    await echo.close()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        yield proxy


async def open_through(
    proxy: FaultProxy,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 2
) -> bytes:
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(timeout):
        return await reader.readexactly(len(data))


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 2) -> bool:
    """True when the connection ends (EOF or reset) within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.read(1) == b""
    except ConnectionError:
        return True


async def wait_for(condition: Callable[[], bool], timeout: float = 2) -> None:
    async with asyncio.timeout(timeout):
        for _ in range(int(timeout / 0.01) + 1):
            if condition():
                return
            await asyncio.sleep(0.01)


# ---- FaultProxy -------------------------------------------------------------------------------


async def test_proxy_forwards_bytes_both_ways_and_a_half_close(proxy: FaultProxy) -> None:
    reader, writer = await open_through(proxy)
    try:
        payload = os.urandom(300_000)  # several chunks
        assert await round_trip(reader, writer, payload) == payload
        assert proxy.connections == 1
        writer.write_eof()  # the echo server sees EOF, closes, and so the proxy closes us
        assert await closed_by_peer(reader)
        await wait_for(lambda: proxy.connections == 0)
    finally:
        writer.close()
    assert proxy.accepted == 1
    assert proxy.errors == []


async def test_cut_resets_every_live_connection_and_new_ones_still_work(
    proxy: FaultProxy,
) -> None:
    links = [await open_through(proxy) for _ in range(3)]
    try:
        for reader, writer in links:
            assert await round_trip(reader, writer, b"ping") == b"ping"
        assert proxy.cut() == 3
        assert proxy.connections == 0
        for reader, _ in links:
            assert await closed_by_peer(reader)
        reader, writer = await open_through(proxy)
        links.append((reader, writer))
        assert await round_trip(reader, writer, b"again") == b"again"
    finally:
        for _, writer in links:
            writer.close()


async def test_black_hole_holds_bytes_keeps_the_socket_and_resume_delivers_them(
    proxy: FaultProxy,
) -> None:
    reader, writer = await open_through(proxy)
    try:
        assert await round_trip(reader, writer, b"before") == b"before"
        proxy.black_hole()
        writer.write(b"held")
        await writer.drain()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(QUIET):
                await reader.read(1)
        assert proxy.connections == 1  # still open: nothing tells the client
        assert not reader.at_eof()
        proxy.resume()
        async with asyncio.timeout(2):
            assert await reader.readexactly(4) == b"held"
        assert await round_trip(reader, writer, b"after") == b"after"
    finally:
        writer.close()


async def test_refuse_cuts_live_connections_and_resets_new_ones_until_accept(
    proxy: FaultProxy, echo_port: int
) -> None:
    reader, writer = await open_through(proxy)
    writers = [writer]
    try:
        assert await round_trip(reader, writer, b"x") == b"x"
        assert proxy.refuse() == 1
        assert await closed_by_peer(reader)
        reader, writer = await open_through(proxy)
        writers.append(writer)
        writer.write(b"hello")
        assert await closed_by_peer(reader)  # reset on arrival, nothing forwarded
        assert proxy.rejected == 1
        assert proxy.accepted == 1
        proxy.accept()
        reader, writer = await open_through(proxy)
        writers.append(writer)
        assert await round_trip(reader, writer, b"back") == b"back"
    finally:
        for writer in writers:
            writer.close()


async def test_latency_delays_each_way(proxy: FaultProxy) -> None:
    reader, writer = await open_through(proxy)
    try:
        assert await round_trip(reader, writer, b"warm") == b"warm"
        proxy.latency(0.15)
        started_at = time.monotonic()
        assert await round_trip(reader, writer, b"slow") == b"slow"
        assert time.monotonic() - started_at >= 0.3  # 0.15 s there, 0.15 s back
        proxy.heal()
        started_at = time.monotonic()
        assert await round_trip(reader, writer, b"fast") == b"fast"
        assert time.monotonic() - started_at < 0.15
    finally:
        writer.close()


async def test_a_dead_target_falls_over_to_the_next(echo_port: int) -> None:
    dead = FaultProxy("127.0.0.1", 1)
    nowhere = await dead.start()
    await dead.close()  # a port on which nothing listens any more
    async with FaultProxy("127.0.0.1", nowhere, fallbacks=[("127.0.0.1", echo_port)]) as proxy:
        reader, writer = await open_through(proxy)
        try:
            assert await round_trip(reader, writer, b"via the second") == b"via the second"
        finally:
            writer.close()


async def test_close_resets_connections_and_stops_listening(echo_port: int) -> None:
    proxy = FaultProxy("127.0.0.1", echo_port)
    port = await proxy.start()
    reader, writer = await open_through(proxy)
    try:
        assert await round_trip(reader, writer, b"x") == b"x"
        await proxy.close()
        assert await closed_by_peer(reader)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        writer.close()


async def test_a_link_is_reset_after_max_chunks_one_way(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port, max_chunks=2) as proxy:
        reader, writer = await open_through(proxy)
        try:
            assert await round_trip(reader, writer, b"one") == b"one"
            writer.write(b"two")  # the second chunk: the limit
            async with asyncio.timeout(2):
                ended = False
                for _ in range(10):  # "two" may still come back before the reset
                    try:
                        ended = await reader.read(10) == b""
                    except ConnectionError:
                        ended = True
                    if ended:
                        break
            assert ended
            await wait_for(lambda: proxy.connections == 0)
            assert [type(error).__name__ for error in proxy.errors] == ["LinkExhausted"]
        finally:
            writer.close()


async def test_the_proxy_as_a_process_is_driven_over_its_control_port(echo_port: int) -> None:
    """The command line that tests/test_observability.py uses (through test_faults.tool)."""
    script = [sys.executable, str(Path(tcp_proxy.__file__))]
    process = await asyncio.create_subprocess_exec(
        *script, "--target", f"127.0.0.1:{echo_port}", "--max-seconds", "60",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            ready = (await process.stdout.readline()).decode().split()
        assert ready[0] == "READY"
        ports = dict(word.split("=") for word in ready[1:])

        async def ctl(*words: str) -> tuple[int, str]:
            done = await asyncio.create_subprocess_exec(
                *script, "ctl", ports["control"], *words, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await done.communicate()
            return await done.wait(), out.decode().strip()

        reader, writer = await asyncio.open_connection("127.0.0.1", int(ports["port"]))
        try:
            assert await round_trip(reader, writer, b"via a process") == b"via a process"
            assert await ctl("down") == (0, "ok down 1")
            assert await closed_by_peer(reader)
        finally:
            writer.close()
        assert await ctl("up") == (0, "ok up")
        assert (await ctl("status"))[1].startswith("ok connections=0 accepted=1 rejected=0")
        assert (await ctl("explode"))[0] == 1
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            assert await process.wait() == 0


def test_the_proxy_forwards_to_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("10.1.2.3", 5672)
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("127.0.0.1", 5672, fallbacks=[("example.com", 5672)])


# ---- RabbitMQ nodes ---------------------------------------------------------------------------


def test_without_rabbitmq_server_node_tests_skip_and_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rabbit_nodes, "_sbin", lambda: None)
    monkeypatch.setattr(conftest, "IN_CI", False)
    skipped = pytest.raises(pytest.skip.Exception, match="rabbitmq-server is not installed")
    with skipped, started(1, first=4):
        pass
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true"), started(1, first=4):
        pass


@pytest.mark.cluster
async def test_a_lone_node_answers_dies_when_killed_restarts_and_leaves_nothing() -> None:
    """choreo-t4@localhost on 5694 (clear of the cluster of test_faults on 5691-5693)."""
    with started(1, first=4) as nodes:
        node = nodes.node(4)
        root = nodes.root
        assert nodes.urls == ["amqp://guest:guest@127.0.0.1:5694/"]
        cookie = root / ".erlang.cookie"
        assert stat.S_IMODE(cookie.stat().st_mode) == 0o400
        connection = await aio_pika.connect(node.url)  # guest works over loopback
        await connection.close()
        pid = node.pid
        assert pid is not None
        assert Path(f"/proc/{pid}/comm").read_text().startswith("beam")

        await asyncio.to_thread(nodes.kill, 4)
        assert not node.running
        assert not Path(f"/proc/{pid}").exists()
        assert not answers_amqp(5694)

        await asyncio.to_thread(nodes.restart, 4)
        assert answers_amqp(5694)
        assert node.pid not in (None, pid)
    assert not root.exists()  # data removed
    for port in (5694, 25694, nodes.epmd_port):  # node and private epmd gone
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)


def test_groups_refuse_bad_node_numbers() -> None:
    if rabbit_nodes.missing() is not None:
        pytest.skip(str(rabbit_nodes.missing()))
    nodes = RabbitNodes(2, first=7)
    try:
        assert [node.name for node in nodes.nodes] == ["choreo-t7@localhost", "choreo-t8@localhost"]
        assert nodes.urls[1] == "amqp://guest:guest@127.0.0.1:5698/"
        with pytest.raises(ValueError, match=r"7\.\.8"):
            nodes.node(9)
    finally:
        nodes.stop()  # never started: nothing to stop
    assert nodes.root is None


def test_a_claim_on_ports_waits_for_another_session(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(rabbit_nodes, "CLAIM_DIR", tmp_path)
    first = rabbit_nodes._Claim([5691, 5692])
    first.acquire(timeout=1)
    try:
        second = rabbit_nodes._Claim([5692])
        with pytest.raises(rabbit_nodes.RabbitNodeError, match="port 5692 released"):
            second.acquire(timeout=0.3)
    finally:
        first.release()
    second.acquire(timeout=1)
    second.release()


def test_a_claim_ends_what_a_dead_session_left_on_its_ports(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A session killed before its teardown left a process and a data directory: the next
    claim ends that process (matched by pid and start time) and removes the directory."""
    monkeypatch.setattr(rabbit_nodes, "CLAIM_DIR", tmp_path)
    leftover = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        data = tmp_path / f"{rabbit_nodes.DATA_PREFIX}dead-session"
        data.mkdir()
        identity = rabbit_nodes._identity(leftover.pid)
        assert identity is not None
        dead = rabbit_nodes._Claim([5699])
        dead.acquire(timeout=1)
        dead.record({"root": str(data), "processes": [[leftover.pid, identity[0]]]})
        for handle in dead._files:  # the session dies: its lock goes, its record stays
            handle.close()
        claim = rabbit_nodes._Claim([5699])
        claim.acquire(timeout=1)
        claim.release()
        assert leftover.wait(timeout=5) == -signal.SIGKILL
        assert not data.exists()
    finally:
        leftover.kill()
        leftover.wait()


# ---- PostgreSQL databases ---------------------------------------------------------------------


async def write_and_read(url: str) -> list[tuple[int, str]]:
    """Create a table through SQLAlchemy async, write two rows, read them back."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            await connection.execute(
                text("INSERT INTO t (id, v) VALUES (:id, :v)"),
                [{"id": 1, "v": "one"}, {"id": 2, "v": "two"}],
            )
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT id, v FROM t ORDER BY id"))
            return [(row.id, row.v) for row in rows]
    finally:
        await engine.dispose()


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.mark.postgres
async def test_a_throwaway_postgres_database_takes_writes_and_is_dropped_with_its_connections(
    postgres_url: str,
) -> None:
    async with postgres.throwaway_database(postgres_url) as url:
        name = database_name(url)
        assert url == postgres.database_url(postgres_url, name)
        assert name.startswith("choreo_t_")
        assert len(name) == len("choreo_t_") + 12
        assert await postgres.database_exists(postgres_url, name)
        assert await write_and_read(url) == [(1, "one"), (2, "two")]
        # a connection the test forgets: DROP ... WITH (FORCE) ends it
        leftover = await asyncpg.connect(postgres.database_url(postgres_url, name, "postgresql"))
    try:
        assert not await postgres.database_exists(postgres_url, name)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await leftover.fetchval("SELECT 1")
    finally:
        leftover.terminate()


@pytest.fixture
async def dropped_afterwards(postgres_url: str) -> AsyncIterator[list[str]]:
    """Requested before ``pg_database``, so torn down after it: the names the test puts in
    the list must be gone by then."""
    names: list[str] = []
    yield names
    assert names
    for name in names:
        assert not await postgres.database_exists(postgres_url, name)


@pytest.mark.postgres
async def test_the_pg_database_fixture_is_a_fresh_postgres_database_dropped_after_the_test(
    dropped_afterwards: list[str], pg_database: str, postgres_url: str
) -> None:
    name = database_name(pg_database)
    dropped_afterwards.append(name)
    assert pg_database.startswith("postgresql+asyncpg://")
    assert await postgres.database_exists(postgres_url, name)
    assert await write_and_read(pg_database) == [(1, "one"), (2, "two")]


async def test_db_url_is_an_empty_database_on_sqlite_and_on_postgres(db_url: str) -> None:
    assert db_url.startswith(("sqlite+aiosqlite:///", "postgresql+asyncpg://"))
    assert await write_and_read(db_url) == [(1, "one"), (2, "two")]  # no table t before


def test_the_postgres_probe_names_a_port_where_nothing_listens() -> None:
    problem = postgres.probe("postgresql://postgres@127.0.0.1:1/choreo_test", timeout=2)
    assert problem is not None
    assert problem.startswith("nothing answers at 127.0.0.1:1 (")
    assert "refused" in problem.lower()


async def test_the_postgres_probe_names_a_port_that_speaks_something_else(
    echo_port: int,
) -> None:
    problem = await postgres.aprobe(f"postgresql://postgres@127.0.0.1:{echo_port}/x", timeout=2)
    assert problem == f"127.0.0.1:{echo_port} does not speak the PostgreSQL protocol"


@pytest.mark.postgres
async def test_the_postgres_probe_names_a_missing_database(postgres_url: str) -> None:
    assert await postgres.aprobe(postgres_url) is None
    missing = postgres.database_url(postgres_url, "choreo_t_000000000000", "postgresql")
    problem = await postgres.aprobe(missing)
    assert problem is not None
    assert "refuses user 'postgres', database 'choreo_t_000000000000'" in problem
    assert "does not exist" in problem


def test_without_postgres_tests_skip_and_fail_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = "postgresql://postgres@127.0.0.1:1/choreo_test"
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match=r"nothing answers at 127\.0\.0\.1:1"):
        conftest.require_postgres(nowhere)
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true: a missing database is a failure"):
        conftest.require_postgres(nowhere)


def test_throwaway_database_urls_keep_the_server_and_take_only_their_own_names() -> None:
    assert postgres.database_url(postgres.DEFAULT_URL, "choreo_t_0123456789ab") == (
        "postgresql+asyncpg://postgres@127.0.0.1:5432/choreo_t_0123456789ab"
    )
    server = "postgresql://u:p%40ss@127.0.0.1:6543/choreo_test?ssl=disable"
    assert postgres.database_url(server, "choreo_t_0123456789ab") == (
        "postgresql+asyncpg://u:p%40ss@127.0.0.1:6543/choreo_t_0123456789ab?ssl=disable"
    )
    with pytest.raises(ValueError, match="not a throw-away database name"):
        postgres._checked('choreo_test"; DROP DATABASE x; --')
    with pytest.raises(ValueError, match="not a throw-away database name"):
        postgres._checked("choreo_test")
