"""The bindings a queue has on the broker, and the stale ones ``choreo topology --prune``
removes: bound to a service's queue (or its ``.requests`` queue) although none of the
service's handlers (responders) wants them any more, after a deploy that dropped a
handler, or left by another service of the same name.

AMQP 0-9-1 binds and unbinds but cannot list bindings, so :func:`list_bindings` asks:

* the in-memory broker itself, for ``memory://``;
* RabbitMQ's management HTTP API when a URL of it is given (``--management``,
  ``CHOREO_MANAGEMENT_URL``): ``GET /api/queues/{vhost}/{queue}/bindings``, as the broker
  URL's user (or the management URL's own ``user:password@``);
* else ``rabbitmqctl list_bindings`` of this machine, when it is on PATH.

Only the service and request queues of the plan are compared with it: never their
dead-letter, retry or quarantine queues, nor a queue the plan does not have. The default
exchange's binding (every queue has one) is never listed, and a binding with arguments is
not choreo's (choreo binds without any): it is left alone. The unbinding goes through the
transport (``queue.unbind``).

:func:`repartition` is what ``choreo topology --apply`` checks for a partitioned service
after a change of its partition count: the bindings of its partition queues that the plan
no longer has (a bucket bound to two queues delivers its events twice), and its queues
beyond the count (and its unpartitioned queue), with the messages and consumers
:func:`list_queues` finds in them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib import error, request
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from .. import topology
from ..config import redact
from ..errors import ConfigurationError, ConnectionFailed
from ..service import Service
from ..transports.base import FANOUT, Transport
from ..transports.memory import MemoryTransport

__all__ = [
    "Binding",
    "Listing",
    "Pruning",
    "QueueState",
    "Repartition",
    "Stale",
    "list_bindings",
    "list_queues",
    "listing_method",
    "repartition",
    "stale_bindings",
]

Binding = tuple[str, str]  # (exchange, routing key)
HTTP_TIMEOUT = 10.0  # seconds per management API request
CTL_TIMEOUT = 120.0  # rabbitmqctl boots an Erlang VM, and a busy node answers slowly
_CTL_COLUMNS = ("source_name", "destination_name", "destination_kind", "routing_key", "arguments")


@dataclass(frozen=True, slots=True)
class Listing:
    """The bindings of the queues asked for; a queue not on the broker is not a key."""

    source: str  # how they were listed, for the user: "rabbitmqctl (vhost '/')", ...
    bindings: Mapping[str, frozenset[Binding]]


@dataclass(frozen=True, slots=True)
class Stale:
    """A binding on the broker that the plan does not want."""

    queue: str
    exchange: str
    routing_key: str = ""

    def __str__(self) -> str:
        key = f"  key={self.routing_key}" if self.routing_key else ""
        return f"{self.queue} <- {self.exchange}{key}"


@dataclass(frozen=True, slots=True)
class Pruning:
    """What :func:`stale_bindings` found."""

    source: str  # as in Listing
    checked: tuple[str, ...]  # queues compared with the plan
    missing: tuple[str, ...]  # queues of the plan that are not on the broker
    stale: tuple[Stale, ...]


def _first(url: str) -> str:
    """The first URL of a cluster's comma-separated list: the node whose view is listed."""
    return url.split(",")[0].strip()


def _vhost(url: str) -> str:
    path = urlsplit(_first(url)).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def listing_method(url: str, management: str | None) -> str:
    """How the bindings of the broker at ``url`` are listed: ``memory``, ``management``
    or ``rabbitmqctl``; ``ConfigurationError`` when there is no way here."""
    if urlsplit(_first(url)).scheme.lower() == "memory":
        return "memory"
    if management:
        return "management"
    if shutil.which("rabbitmqctl") is not None:
        return "rabbitmqctl"
    raise ConfigurationError(
        "listing bindings needs RabbitMQ's management API or rabbitmqctl: pass "
        "--management http://HOST:15672 (or set CHOREO_MANAGEMENT_URL), or run where "
        "rabbitmqctl is on PATH"
    )


async def list_bindings(
    transport: Transport, url: str, queues: Iterable[str], *, management: str | None = None
) -> Listing:
    """The (exchange, routing key) bindings of each of ``queues`` on the broker at ``url``
    (``transport`` is connected to it), listed as :func:`listing_method` says."""
    names = sorted(set(queues))
    how = listing_method(url, management)
    if how == "memory":
        if not isinstance(transport, MemoryTransport):
            raise ConfigurationError(f"{redact(url)} is not served by the in-memory transport")
        found: dict[str, frozenset[Binding]] = {}
        for name in names:
            try:
                found[name] = frozenset(await transport.bindings(name))
            except ConfigurationError:  # no such queue
                continue
        return Listing("the in-memory broker", found)
    vhost = _vhost(url)
    if how == "management":
        assert management is not None
        api = _Management(management, url)
        return Listing(api.where, await asyncio.to_thread(api.bindings, vhost, names))
    return Listing(f"rabbitmqctl (vhost {vhost!r})", await asyncio.to_thread(_ctl, vhost, names))


def _run_ctl(command: str, vhost: str, *columns: str) -> list[list[str]]:
    """The rows ``rabbitmqctl <command>`` lists in ``vhost``: their tab-separated fields."""
    line = ["rabbitmqctl", command, "-p", vhost, "-q", "--no-table-headers", *columns]
    try:
        done = subprocess.run(
            line, capture_output=True, text=True, timeout=CTL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConnectionFailed(f"rabbitmqctl {command} failed: {exc}") from exc
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines() or ["no output"]
        raise ConnectionFailed(
            f"rabbitmqctl {command} exited with {done.returncode}: {lines[-1].strip()}"
        )
    return [row.split("\t") for row in done.stdout.splitlines()]


def _ctl(vhost: str, queues: list[str]) -> dict[str, frozenset[Binding]]:
    rows = _run_ctl("list_bindings", vhost, *_CTL_COLUMNS)
    wanted = set(queues)
    found: dict[str, set[Binding]] = {}
    for fields in rows:
        if len(fields) != len(_CTL_COLUMNS):
            continue
        source, destination, kind, key, arguments = fields
        if kind != "queue" or destination not in wanted:
            continue
        bound = found.setdefault(destination, set())  # the default binding says it exists
        if source and arguments == "[]":
            bound.add((source, key))
    return {name: frozenset(bound) for name, bound in found.items()}


def _ctl_queues(vhost: str) -> list[tuple[str, int, int]]:
    rows = _run_ctl("list_queues", vhost, "name", "messages", "consumers")
    return [(r[0], _count(r[1]), _count(r[2])) for r in rows if len(r) == 3]


def _count(value: Any) -> int:
    """A listed count; what is not one yet (a queue the statistics have not seen) is 0."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class _Management:
    """RabbitMQ's management HTTP API at ``base``, as the broker URL's user."""

    def __init__(self, base: str, broker_url: str) -> None:
        parts = urlsplit(base)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"invalid management URL {redact(base)!r}: expected http(s)://HOST:PORT"
            )
        own = parts.username is not None
        broker = urlsplit(_first(broker_url))
        user = unquote((parts.username if own else broker.username) or "guest")
        password = unquote((parts.password if own else broker.password) or "guest")
        netloc = parts.netloc.rpartition("@")[2]
        self.base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.where = f"the management API at {self.base}"
        self.user = user
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}

    def bindings(self, vhost: str, queues: list[str]) -> dict[str, frozenset[Binding]]:
        path = f"/api/vhosts/{quote(vhost, safe='')}"
        if self._get(path) is None:  # else a wrong URL would look like missing queues
            raise ConfigurationError(
                f"{self.where} has no vhost {vhost!r} (404): is the URL the management "
                "API's (http://HOST:15672), and the broker URL's vhost right?"
            )
        found: dict[str, frozenset[Binding]] = {}
        for name in queues:
            queue = f"{quote(vhost, safe='')}/{quote(name, safe='')}"
            listed = self._get(f"/api/queues/{queue}/bindings")
            if listed is None:  # no such queue
                continue
            if not isinstance(listed, list) or not all(isinstance(i, dict) for i in listed):
                raise ConnectionFailed(f"{self.where} answered no list of bindings for {name!r}")
            found[name] = frozenset(
                (str(item["source"]), str(item.get("routing_key", "")))
                for item in listed
                if item.get("destination_type") == "queue"
                and item.get("destination") == name
                and item.get("source")
                and not item.get("arguments")
            )
        return found

    def queues(self, vhost: str) -> list[tuple[str, int, int]]:
        path = f"/api/queues/{quote(vhost, safe='')}?columns=name,messages,consumers"
        listed = self._get(path)
        if listed is None:
            raise ConfigurationError(f"{self.where} has no vhost {vhost!r} (404)")
        if not isinstance(listed, list) or not all(isinstance(i, dict) for i in listed):
            raise ConnectionFailed(f"{self.where} answered no list of queues for {vhost!r}")
        return [
            (str(i.get("name")), _count(i.get("messages")), _count(i.get("consumers")))
            for i in listed
        ]

    def _get(self, path: str) -> Any:
        """The JSON answer to ``GET path``; ``None`` for 404 (no such object)."""
        wanted = request.Request(self.base + path, headers=self._headers)
        try:
            with request.urlopen(wanted, timeout=HTTP_TIMEOUT) as answer:
                body = answer.read()
        except error.HTTPError as exc:
            exc.close()  # its socket
            if exc.code == 404:
                return None
            if exc.code == 401:
                raise ConfigurationError(
                    f"{self.where} refused user {self.user!r} (401): check the user and "
                    "password of the broker URL (or give them in the management URL)"
                ) from None
            answered = f"{self.where} answered {exc.code} {exc.reason} to GET {path}"
            if exc.code == 403:
                raise ConfigurationError(
                    f"{answered}: user {self.user!r} needs the management (or monitoring) tag"
                ) from None
            if exc.code < 500:
                raise ConfigurationError(
                    f"{answered}: is it the management API's URL (http://HOST:15672)?"
                ) from None
            raise ConnectionFailed(answered) from None
        except (error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, error.URLError) else exc
            raise ConnectionFailed(f"cannot reach {self.where}: {reason}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise ConnectionFailed(
                f"{self.where} did not answer JSON: is it RabbitMQ's management API?"
            ) from None


def _wanted(
    services: list[Service], namespace: str, plan: topology.Topology
) -> dict[str, set[Binding]]:
    """The bindings ``plan`` wants on each service queue and request queue of ``services``."""
    prunable = {topology.queue_name(namespace, s.name) for s in services if s.handlers} | {
        topology.requests_queue_name(namespace, s.name) for s in services if s.responders
    }
    wanted: dict[str, set[Binding]] = {}
    for queue in plan.queues:
        if queue.name in prunable:  # two services of one name: what either wants
            wanted.setdefault(queue.name, set()).update(queue.bindings)
    return wanted


async def stale_bindings(
    transport: Transport,
    services: Iterable[Service],
    namespace: str,
    url: str,
    *,
    management: str | None = None,
) -> Pruning:
    """The bindings of the services' queues on the broker that their plan does not want."""
    services = list(services)
    plan = topology.plan(services, namespace)
    wanted = _wanted(services, namespace, plan)
    fanout = {name for name, kind in plan.exchanges if kind == FANOUT}
    listing = await list_bindings(transport, url, wanted, management=management)
    stale = []
    for queue, bound in sorted(listing.bindings.items()):
        for exchange, key in sorted(bound):
            # a fanout exchange ignores the routing key: bound at all is what a handler wants
            if (exchange, "" if exchange in fanout else key) not in wanted[queue]:
                stale.append(Stale(queue, exchange, key))
    missing = tuple(sorted(set(wanted) - set(listing.bindings)))
    return Pruning(listing.source, tuple(sorted(listing.bindings)), missing, tuple(stale))


# -- a change of partition count -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueState:
    """A queue on the broker: its messages (ready and unacknowledged) and consumers, as
    listed (the management API's counts can be some seconds old)."""

    name: str
    messages: int = 0
    consumers: int = 0


async def list_queues(
    transport: Transport, url: str, prefix: str, *, management: str | None = None
) -> tuple[str, dict[str, QueueState]]:
    """How they were listed, and the queues whose name starts with ``prefix``, on the broker
    at ``url`` (listed as :func:`listing_method` says)."""
    how = listing_method(url, management)
    if how == "memory":
        if not isinstance(transport, MemoryTransport):
            raise ConfigurationError(f"{redact(url)} is not served by the in-memory transport")
        rows = [
            (name, len(q.messages) + sum(len(c.unsettled) for c in q.consumers), len(q.consumers))
            for name, q in transport.broker.queues.items()
        ]
        source = "the in-memory broker"
    elif how == "management":
        assert management is not None
        api = _Management(management, url)
        rows, source = await asyncio.to_thread(api.queues, _vhost(url)), api.where
    else:
        rows = await asyncio.to_thread(_ctl_queues, _vhost(url))
        source = f"rabbitmqctl (vhost {_vhost(url)!r})"
    found = {name: QueueState(name, n, c) for name, n, c in rows if name.startswith(prefix)}
    return source, found


@dataclass(frozen=True, slots=True)
class Repartition:
    """The partition queues of a service on the broker, against its plan."""

    service: str
    partitions: int
    source: str
    stale: tuple[Stale, ...]  # bindings of its queues that the plan does not have
    unbound: tuple[Stale, ...]  # bindings the plan has that are not on the broker
    orphans: tuple[QueueState, ...]  # its queues the plan does not have, bound or not


async def repartition(
    transport: Transport,
    service: Service,
    namespace: str,
    url: str,
    *,
    management: str | None = None,
) -> Repartition:
    """Compare the partition queues of ``service`` (partitioned) on the broker with its
    plan: queues ``p<i>`` with ``i`` below its count and their bucket bindings, queues
    beyond its count, and its unpartitioned queue (a service that was not partitioned)."""
    plain = topology.queue_name(namespace, service.name)
    shape = re.compile(re.escape(plain) + r"(\.p\d+)?")
    plan = topology.plan([service], namespace)
    wanted = {q.name: set(q.bindings) for q in plan.queues if shape.fullmatch(q.name)}
    source, queues = await list_queues(transport, url, plain, management=management)
    present = {name: state for name, state in queues.items() if shape.fullmatch(name)}
    listing = Listing(source, {})
    if present:
        listing = await list_bindings(transport, url, present, management=management)
    stale, unbound = [], []
    for queue in sorted(set(wanted) | set(present), key=_natural):
        bound = listing.bindings.get(queue, frozenset())
        keep = wanted.get(queue, set())
        stale += [Stale(queue, exchange, key) for exchange, key in sorted(bound - keep)]
        unbound += [Stale(queue, exchange, key) for exchange, key in sorted(keep - bound)]
    orphans = [present[name] for name in sorted(set(present) - set(wanted), key=_natural)]
    count = service.partitions or 1
    return Repartition(service.name, count, source, tuple(stale), tuple(unbound), tuple(orphans))


def _natural(name: str) -> tuple[str, int]:
    """``x.p10`` after ``x.p9``."""
    head, _, tail = name.rpartition(".p")
    return (head, int(tail)) if head and tail.isdigit() else (name, -1)
