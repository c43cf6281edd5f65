"""Throw-away RabbitMQ nodes on loopback, for tests in which a broker has to die.

:class:`RabbitNodes` starts ``size`` nodes (1 = a lone node, 3 = a cluster) beside the shared
broker on 5672, which it never touches::

    with RabbitNodes(size=3, first=1) as nodes:   # choreo-t1..t3@localhost on 5691-5693
        nodes.urls                                 # ["amqp://guest:guest@127.0.0.1:5691/", ...]
        nodes.kill(1)                              # SIGKILL node 1's beam (pid from its pid file)
        nodes.restart(1)                           # start it again, wait until it is clustered
    # every node and the private epmd are stopped, the data directory is removed

Node ``i`` is ``{prefix}{i}@localhost`` with AMQP on ``127.0.0.1:{amqp_base + i}`` and Erlang
distribution on ``127.0.0.1:{dist_base + i}``; the defaults (5691.., 25691..) stay clear of
``../shared/tools/rmq-cluster`` (5681-5683, 25681-25683), so both can run at once. Groups with
disjoint indices (``first=1, size=3`` and ``first=4, size=1``) can run at the same time too.

Isolation: each group has its own data directory (a temp dir), its own random Erlang cookie
(``HOME/.erlang.cookie``, mode 400) and its own epmd on ``127.0.0.1:{epmd_base + first}``,
so node names never meet the shared epmd on 4369 and nothing is left behind on a machine that
had no epmd. ``RABBITMQ_CONF_ENV_FILE=/dev/null`` and a scrubbed environment keep
``/etc/rabbitmq`` and the caller's ``RABBITMQ_*``/``ERL_*`` variables out. The scripts of
``/usr/lib/rabbitmq/bin`` are run directly: as root, Debian's ``/usr/sbin`` wrappers would
``su rabbitmq``. Nodes use ``cluster_partition_handling = pause_minority``, so a node cut off
longer than ``net_ticktime`` pauses and rejoins by itself.

Several test sessions on one machine: a group first claims its ports (an exclusive ``flock``
on ``$TMPDIR/choreo-rabbit-<amqp port>.lock`` per node, which the kernel releases when the
process dies), waiting up to ``CLAIM_TIMEOUT`` for another session to finish with them. The
lock file records what the group started (pid and start time of each process, data dir): a
session killed before its teardown (SIGKILL, ``timeout``) leaves nodes behind, and the next
claimant ends exactly those processes and removes that directory before it starts.

Plugins: none by default; ``plugins=("rabbitmq_management",)`` enables the management plugin,
its HTTP API on ``127.0.0.1:{management_base + i}`` (default 15691..; ``node.management_url``),
and a node counts as started once that API answers too.

Every wait is bounded (count and time). :func:`started` is the fixture helper: it skips when
RabbitMQ is not installed (fails in CI) and always stops what it started.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

LOOPBACK = "127.0.0.1"
HOST = "localhost"  # short node names: resolves through /etc/hosts, and has no dot
SBIN_CANDIDATES = (os.environ.get("CHOREO_RABBITMQ_SBIN", ""), "/usr/lib/rabbitmq/bin")
START_TIMEOUT = 90.0  # one node's boot, in seconds (≈5 s alone, more when three boot at once)
STOP_TIMEOUT = 30.0
CLUSTER_TIMEOUT = 60.0
CTL_TIMEOUT = 30.0
CLAIM_TIMEOUT = 300.0  # waiting for another test session to release the same ports
CLAIM_DIR = Path(tempfile.gettempdir())
DATA_PREFIX = "choreo-rabbit-"
POLL = 0.2
LOOPBACK_ERL_ARGS = "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
MANAGEMENT = "rabbitmq_management"


class RabbitNodeError(RuntimeError):
    """A node did not start, stop or cluster in time (the message says where its logs are)."""


def _sbin() -> Path | None:
    candidates = [Path(c) for c in SBIN_CANDIDATES if c]
    found = shutil.which("rabbitmq-server")
    if found is not None:
        candidates.append(Path(found).resolve().parent)
    for directory in candidates:
        server = directory / "rabbitmq-server"
        if (
            os.access(server, os.X_OK)
            and os.access(directory / "rabbitmqctl", os.X_OK)
            and server.resolve().name != "rabbitmq-script-wrapper"  # Debian's su wrapper
        ):
            return directory
    return None


def _epmd() -> str | None:
    return shutil.which("epmd")


def missing() -> str | None:
    """None when RabbitMQ nodes can be started here, else why not."""
    if _sbin() is None:
        return (
            "rabbitmq-server is not installed (looked in /usr/lib/rabbitmq/bin, on PATH and in "
            "CHOREO_RABBITMQ_SBIN)"
        )
    if _epmd() is None:
        return "epmd (Erlang) is not on PATH"
    return None


def answers_amqp(port: int, timeout: float = 1.0) -> bool:
    """True when an AMQP 0-9-1 broker answers the protocol header on 127.0.0.1:port."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(1) == b"\x01"  # a method frame: connection.start
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _wait(what: str, ready: Callable[[], bool], timeout: float) -> None:
    """Poll ``ready()`` every POLL s until it is true; bounded by ``timeout`` and a count."""
    deadline = time.monotonic() + timeout
    for _attempt in range(int(timeout / POLL) + 2):
        if ready():
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    raise RabbitNodeError(f"{what}: not within {timeout:.0f} s")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _identity(pid: int) -> tuple[int, int] | None:
    """(start time, process group) of a live process, None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19]), int(fields[2])  # stat fields 22 (starttime) and 5 (pgrp)


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class _Claim:
    """Exclusive use of some AMQP ports (and the dist/epmd ports that go with them) by this
    process, across test sessions: one flock'ed file per port, holding what runs on them."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = sorted(ports)  # always the same order: no deadlock between sessions
        self._files: list[IO[str]] = []

    def acquire(self, timeout: float = CLAIM_TIMEOUT) -> None:
        try:
            for port in self.ports:
                lock_file: IO[str] = (CLAIM_DIR / f"choreo-rabbit-{port}.lock").open("a+")
                self._files.append(lock_file)
                locked = functools.partial(_try_lock, lock_file)
                _wait(f"port {port} released by another test session", locked, timeout)
            for handle in self._files:
                handle.seek(0)
                text = handle.read().strip()
                if text:
                    _end_leftovers(json.loads(text))
        except BaseException:
            self.release()
            raise

    def record(self, state: dict[str, Any]) -> None:
        text = json.dumps(state)
        for handle in self._files:
            handle.seek(0)
            handle.truncate()
            handle.write(text)
            handle.flush()

    def release(self) -> None:
        self.record({})
        for handle in self._files:
            handle.close()  # and so unlocked
        self._files = []


def _end_leftovers(state: dict[str, Any]) -> None:
    """End what a dead session recorded: only processes whose pid *and* start time match
    (never a reused pid), then remove its data directory."""
    ended = []
    for pid, started_at in state.get("processes", []):
        identity = _identity(pid)
        if identity is None or identity[0] != started_at:
            continue
        with contextlib.suppress(ProcessLookupError):
            if identity[1] == pid:  # a session leader we started: its whole group
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        ended.append((pid, started_at))

    def gone() -> bool:
        return all(
            (identity := _identity(pid)) is None or identity[0] != started_at
            for pid, started_at in ended
        )

    _wait("leftover nodes of a dead test session to exit", gone, 15)
    root = state.get("root")
    if root and Path(root).parent == CLAIM_DIR and Path(root).name.startswith(DATA_PREFIX):
        shutil.rmtree(root, ignore_errors=True)


class RabbitNode:
    """One node of a :class:`RabbitNodes` group. Use the group's methods to drive it."""

    def __init__(self, group: RabbitNodes, index: int) -> None:
        self.group = group
        self.index = index
        self.name = f"{group.prefix}{index}@{HOST}"
        self.amqp_port = group.amqp_base + index
        self.dist_port = group.dist_base + index
        self.management_port = group.management_base + index
        self._process: subprocess.Popen[bytes] | None = None
        self._terminated = False

    def __repr__(self) -> str:
        return f"<RabbitNode {self.name} amqp={self.amqp_port} {self.state}>"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOOPBACK}:{self.amqp_port}/"

    @property
    def management_url(self) -> str:
        """Base URL of the management HTTP API (with ``plugins=("rabbitmq_management",)``)."""
        if MANAGEMENT not in self.group.plugins:
            raise RabbitNodeError(f"{self.name} runs without the {MANAGEMENT} plugin")
        return f"http://{LOOPBACK}:{self.management_port}"

    def management_answers(self) -> bool:
        """True when the management API answers ``GET /api/overview`` as guest."""
        wanted = urllib.request.Request(
            f"{self.management_url}/api/overview",
            headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="},  # guest:guest
        )
        try:
            with urllib.request.urlopen(wanted, timeout=2) as answer:
                return int(answer.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    @property
    def dir(self) -> Path:
        """The node's data, config and logs (inside the group's data directory)."""
        return self.group.data / f"node{self.index}"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    def processes(self) -> list[int]:
        """Pids of the server script and, once it has written its pid file, of beam.smp."""
        if self._process is None or self._process.returncode is not None:
            return []
        beam = self.pid
        return [self._process.pid] + ([beam] if beam is not None else [])

    @property
    def state(self) -> str:
        return "running" if self.running else "down"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The beam.smp pid from the pid file, if it is alive and ours (never a reused pid)."""
        if self._process is None:
            return None
        try:
            pid = int(self.pid_file.read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)"
        if not comm.startswith("beam") or parent != self._process.pid:
            return None
        return pid

    def answers(self) -> bool:
        return answers_amqp(self.amqp_port)

    def launch(self, seed: RabbitNode | None = None) -> None:
        """Start the node in the background (no wait); join ``seed`` on its first boot."""
        if self.running:
            return
        self._reap()
        ports = [self.amqp_port, self.dist_port]
        if MANAGEMENT in self.group.plugins:
            ports.append(self.management_port)
        for port in ports:
            if not _port_free(port):
                raise RabbitNodeError(
                    f"port {port} on {LOOPBACK} is in use, not by {self.name}: another test "
                    "session, or nodes left over by a killed one?"
                )
        (self.dir / "log").mkdir(parents=True, exist_ok=True)
        (self.dir / "mnesia").mkdir(exist_ok=True)
        conf = [
            "log.console = false",
            "log.file.level = info",
            "loopback_users.guest = true",
            "cluster_partition_handling = pause_minority",
        ]
        if MANAGEMENT in self.group.plugins:
            conf += [
                f"management.tcp.ip = {LOOPBACK}",
                f"management.tcp.port = {self.management_port}",
            ]
        if seed is not None:  # read on a blank node's first boot only
            conf += [
                "cluster_formation.peer_discovery_backend = classic_config",
                f"cluster_formation.classic_config.nodes.1 = {seed.name}",
            ]
        (self.dir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        (self.dir / "enabled_plugins").write_text(f"[{','.join(self.group.plugins)}].\n")
        self.pid_file.unlink(missing_ok=True)
        env = {
            **self.group.env(),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),  # absent
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.dir / "plugins-expand"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": LOOPBACK_ERL_ARGS,
        }
        with self.console.open("ab") as console:
            # its own session: a Ctrl-C of pytest does not reach it, and killpg(pid) ends
            # exactly this node's script and beam
            self._process = subprocess.Popen(
                [str(self.group.sbin / "rabbitmq-server")],
                cwd=self.dir,  # erl_crash.dump lands here
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the node answers AMQP (and its management API, when enabled); raise
        (with its log) if it exits or times out."""
        management = MANAGEMENT in self.group.plugins

        def ready() -> bool:
            if not self.running:
                raise RabbitNodeError(
                    f"{self.name} exited while starting (logs: {self.dir}):\n{_tail(self.console)}"
                )
            return self.answers() and (not management or self.management_answers())

        what = f"{self.name} answering AMQP on {self.amqp_port}"
        if management:
            what += f" and HTTP on {self.management_port}"
        try:
            _wait(what, ready, timeout)
        except RabbitNodeError as exc:
            if self.running:
                raise RabbitNodeError(f"{exc} (logs: {self.dir})\n{_tail(self.console)}") from None
            raise

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self.launch()
        self.wait_ready(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful stop (SIGTERM to the server script, which stops the broker); SIGKILL if
        that takes longer than ``timeout``. Data is kept."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
        self._reap()

    def terminate(self) -> None:
        """Ask the node to stop (SIGTERM to its server script, once); do not wait."""
        if self.running and not self._terminated:
            self._terminated = True
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()  # type: ignore[union-attr]

    def kill(self) -> None:
        """SIGKILL the node's beam.smp (pid from its pid file), as a crash or OOM kill would."""
        pid = self.pid
        if pid is None:
            if self.running:  # not booted far enough to write its pid file
                self._kill_group()
            self._reap()
            return
        os.kill(pid, signal.SIGKILL)
        self._reap()  # the server script exits with its beam

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        self.stop()
        self.start(timeout)

    def _kill_group(self) -> None:
        """SIGKILL the node's own session (its script, beam and their helpers). Only while the
        script is not reaped yet: until then its pid, the group id, cannot be reused."""
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)

    def _reap(self, timeout: float = 15.0) -> None:
        process = self._process
        if process is None:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_group()
            process.wait(timeout)
        self._process = None
        self._terminated = False


class RabbitNodes:
    """``size`` RabbitMQ nodes on loopback: a lone node, or a cluster joined to node ``first``.

    Methods take the node's number (``first`` .. ``first + size - 1``).
    """

    def __init__(
        self,
        size: int = 3,
        *,
        first: int = 1,
        prefix: str = "choreo-t",
        amqp_base: int = 5690,
        dist_base: int = 25690,
        epmd_base: int = 4390,
        plugins: tuple[str, ...] = (),
        management_base: int = 15690,
    ) -> None:
        if not 1 <= size <= 9:
            raise ValueError("size must be 1..9")
        sbin = _sbin()
        if sbin is None:
            raise RabbitNodeError(missing() or "rabbitmq-server is not installed")
        self.sbin = sbin
        self.size = size
        self.first = first
        self.prefix = prefix
        self.amqp_base = amqp_base
        self.dist_base = dist_base
        self.epmd_port = epmd_base + first
        self.plugins = tuple(plugins)
        self.management_base = management_base
        self.root: Path | None = None  # the data directory, while started
        self.nodes = [RabbitNode(self, first + k) for k in range(size)]
        self._epmd: subprocess.Popen[bytes] | None = None
        self._claim = _Claim([node.amqp_port for node in self.nodes])

    def __repr__(self) -> str:
        return f"<RabbitNodes {self.nodes!r} in {self.root}>"

    @property
    def data(self) -> Path:
        if self.root is None:
            raise RabbitNodeError("not started: no data directory yet")
        return self.root

    def node(self, n: int) -> RabbitNode:
        if not self.first <= n < self.first + self.size:
            raise ValueError(f"node {n}: this group has {self.first}..{self.first + self.size - 1}")
        return self.nodes[n - self.first]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def env(self) -> dict[str, str]:
        """Environment for the RabbitMQ scripts: ours only, never the caller's RABBITMQ_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.data),  # .erlang.cookie
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_CONF_ENV_FILE="/dev/null",
            RABBITMQ_CTL_ERL_ARGS=LOOPBACK_ERL_ARGS,
        )
        return env

    # ---- the whole group ---------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> list[str]:
        """Claim the ports, start epmd and every node; the first boots alone, the others then
        join it. Returns the URLs once every node answers AMQP and the cluster has them all."""
        if self.root is None:
            _LIVE.add(self)
            self._claim.acquire()
            self.root = Path(tempfile.mkdtemp(prefix=f"{DATA_PREFIX}{self.prefix}{self.first}-"))
            self._record()
            cookie = self.root / ".erlang.cookie"  # Erlang refuses a cookie others can read
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(20).upper())
        self._start_epmd()
        seed = self.nodes[0]
        seed.start(timeout)
        self._record()
        for node in self.nodes[1:]:
            node.launch(seed=seed)
        self._record()
        for node in self.nodes[1:]:
            node.wait_ready(timeout)
        self._record()
        self.wait_clustered()
        return self.urls

    def stop(self) -> None:
        """Stop every node (in parallel, graceful then SIGKILL), epmd, and remove the data."""
        try:
            for node in self.nodes:
                node.terminate()  # all at once: they stop in parallel
            for node in self.nodes:
                node.stop()
        finally:
            for node in self.nodes:
                node._kill_group()
                node._reap()
            self._stop_epmd()
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
            self._claim.release()
            _LIVE.discard(self)

    def _record(self) -> None:
        """Note in the claim what runs now, for a session that finds it dead (see above)."""
        pids = [node_pid for node in self.nodes for node_pid in node.processes()]
        if self._epmd is not None and self._epmd.returncode is None:
            pids.append(self._epmd.pid)
        processes = [[pid, identity[0]] for pid in pids if (identity := _identity(pid))]
        self._claim.record({"owner": os.getpid(), "root": str(self.root), "processes": processes})

    def __enter__(self) -> RabbitNodes:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- one node ----------------------------------------------------------------------------

    def kill(self, n: int) -> None:
        """SIGKILL node ``n``'s beam.smp, read from its pid file."""
        self.node(n).kill()

    def stop_node(self, n: int) -> None:
        """Stop node ``n`` gracefully (data kept)."""
        self.node(n).stop()

    def restart(self, n: int, timeout: float = START_TIMEOUT) -> None:
        """Stop node ``n`` if it runs, start it, wait until it answers and is clustered again."""
        self.node(n).restart(timeout)
        self._record()
        self.wait_clustered()

    # ---- cluster state -----------------------------------------------------------------------

    def ctl(self, n: int, *args: str, timeout: float = CTL_TIMEOUT) -> str:
        """``rabbitmqctl -n <node n> args...`` with this group's cookie and epmd; its stdout."""
        done = subprocess.run(
            [str(self.sbin / "rabbitmqctl"), "-n", self.node(n).name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RabbitNodeError(
                f"rabbitmqctl {' '.join(args)} on {self.node(n).name} exited with "
                f"{done.returncode}: {done.stderr.strip()[-800:]}"
            )
        return done.stdout

    def running_nodes(self) -> list[str]:
        """The running members of the cluster, as the first running node sees them."""
        for node in self.nodes:
            if node.running and node.answers():
                status = json.loads(self.ctl(node.index, "cluster_status", "--formatter", "json"))
                return sorted(status.get("running_nodes", []))
        return []

    def wait_clustered(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Wait until every node of the group runs in one cluster."""
        if self.size == 1:
            return
        wanted = sorted(node.name for node in self.nodes)
        _wait(
            f"cluster of {', '.join(wanted)}",
            lambda: self.running_nodes() == wanted,
            timeout,
        )

    # ---- epmd --------------------------------------------------------------------------------

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        epmd = _epmd()
        if epmd is None:
            raise RabbitNodeError("epmd (Erlang) is not on PATH")
        if not _port_free(self.epmd_port):
            raise RabbitNodeError(
                f"port {self.epmd_port} on {LOOPBACK} (this group's epmd) is in use: another "
                "test session, or an epmd left over by a killed one?"
            )
        with (self.data / "epmd.log").open("ab") as log:
            self._epmd = subprocess.Popen(
                [epmd, "-port", str(self.epmd_port), "-address", LOOPBACK],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def listening() -> bool:
            if self._epmd is None or self._epmd.poll() is not None:
                raise RabbitNodeError(f"epmd exited: {_tail(self.data / 'epmd.log')}")
            try:
                socket.create_connection((LOOPBACK, self.epmd_port), timeout=1).close()
            except OSError:
                return False
            return True

        self._record()
        _wait(f"epmd on {self.epmd_port}", listening, 10)

    def _stop_epmd(self) -> None:
        process, self._epmd = self._epmd, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


_LIVE: set[RabbitNodes] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Last resort when a test run dies without its teardown: stop what is still running."""
    for group in list(_LIVE):
        group.stop()


@contextlib.contextmanager
def started(size: int, *, first: int, plugins: tuple[str, ...] = ()) -> Iterator[RabbitNodes]:
    """Fixture helper: running nodes (with ``plugins`` enabled), always stopped afterwards.
    Skips when RabbitMQ is not installed here, except in CI (``CI=true``), where that fails
    the test."""
    import pytest

    from ..conftest import IN_CI

    reason = missing()
    if reason is not None:
        message = f"RabbitMQ nodes needed for this test: {reason}"
        if IN_CI:
            pytest.fail(
                f"{message} (CI=true: a missing rabbitmq-server is a failure)", pytrace=False
            )
        pytest.skip(message)
    with RabbitNodes(size, first=first, plugins=plugins) as nodes:
        yield nodes
