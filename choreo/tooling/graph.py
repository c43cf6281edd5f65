"""The choreography map, read from code: which service consumes, emits, asks and answers what.

:func:`choreography` collects what services declare: the events their handlers consume,
the events they emit (``emits=``), the requests they send (``requests=``) and answer
(``@responds``, with the reply type its return annotation names), with the partition count
of a partitioned service and the ordering key (``Event`` ``key=``) of an event. Renderers
turn it into
Mermaid, Graphviz DOT or JSON; every listing is sorted, so the output of the same code is
the same text every time (fit for a diff in review, or a file checked into a repository).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigurationError
from ..events import Event
from ..service import Handler, Service

__all__ = ["FORMATS", "Choreography", "RequestEdge", "Use", "choreography", "render"]

Role = Literal["consumes", "emits", "requests", "responds", "replies"]
FORMATS = ("mermaid", "dot", "json")


@dataclass(frozen=True, slots=True)
class Use:
    """One declaration: ``service`` ``role`` the event or request ``name``, as ``event_type``."""

    service: str
    role: Role
    name: str
    event_type: type[Event]

    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.name, self.service, self.role, qualname(self.event_type))


@dataclass(frozen=True, slots=True)
class RequestEdge:
    """``requester`` asks ``responder`` (``None``: no given service answers) ``request``;
    ``reply`` is the reply's name when the responder's return annotation names it."""

    requester: str
    responder: str | None
    request: str
    reply: str | None

    @property
    def label(self) -> str:
        return f"{self.request} / {self.reply}" if self.reply else self.request


@dataclass(frozen=True, slots=True)
class Choreography:
    """What the given services declare; see :func:`choreography`."""

    services: tuple[Service, ...]  # sorted by name
    uses: tuple[Use, ...]  # sorted by name, service, role

    @property
    def service_names(self) -> list[str]:
        return [service.name for service in self.services]

    def who(self, role: Role, name: str) -> list[str]:
        """Names of the services that ``role`` ``name``, sorted, each once."""
        return sorted({u.service for u in self.uses if u.role == role and u.name == name})

    def names(self, *roles: Role) -> list[str]:
        """Event (or request) names with at least one use in ``roles``, sorted."""
        return sorted({u.name for u in self.uses if u.role in roles})

    def of(self, service: str, role: Role) -> list[str]:
        """What ``service`` ``role``, sorted."""
        return sorted({u.name for u in self.uses if u.service == service and u.role == role})

    @property
    def events(self) -> list[str]:
        """Names of the events consumed or emitted (requests and replies aside)."""
        return self.names("consumes", "emits")

    @property
    def requests(self) -> list[str]:
        """Names of the requests sent or answered."""
        return self.names("requests", "responds")

    def reply_of(self, request: str, responder: str | None = None) -> str | None:
        """The reply name of ``request`` (by ``responder``, if given), when one is declared."""
        replies = sorted(
            u.name
            for u in self.uses
            if u.role == "replies"
            and (responder is None or u.service == responder)
            and self._answers(u.service, request, u.event_type)
        )
        return replies[0] if replies else None

    def _answers(self, service: str, request: str, reply_type: type[Event]) -> bool:
        found = next((s for s in self.services if s.name == service), None)
        handler = found.responders.get(request) if found else None
        return handler is not None and handler.reply_type is reply_type

    @property
    def request_edges(self) -> list[RequestEdge]:
        """Every requester -> responder pair, sorted; a request nobody answers has one
        edge per requester with ``responder=None``."""
        edges = []
        for request in self.requests:
            responders: list[str | None] = [*self.who("responds", request)] or [None]
            for requester in self.who("requests", request):
                for responder in responders:
                    reply = self.reply_of(request, responder)
                    edges.append(RequestEdge(requester, responder, request, reply))
        return edges

    def partitions(self, service: str) -> int | None:
        """The partition count of ``service`` (``Service(partitions=N)``), or ``None``."""
        found = next((s for s in self.services if s.name == service), None)
        return found.partitions if found is not None and found.handlers else None

    def key_of(self, name: str) -> str | None:
        """The ordering key field of the event ``name`` (``Event`` ``key=``), or ``None``;
        classes of one name that disagree: their keys, sorted, joined with ``|``."""
        keys = sorted({t.__event_key__ for t in self.types(name) if t.__event_key__})
        return " | ".join(keys) or None

    def service_label(self, service: str) -> str:
        count = self.partitions(service)
        return f"{service} ({count} partitions)" if count else service

    def event_label(self, name: str) -> str:
        key = self.key_of(name)
        return f"{name} (key: {key})" if key else name

    def types(self, name: str) -> list[type[Event]]:
        """The distinct classes declared under ``name``, sorted by qualified name."""
        found = {u.event_type for u in self.uses if u.name == name}
        return sorted(found, key=qualname)


def qualname(event_type: type) -> str:
    return f"{event_type.__module__}.{event_type.__qualname__}"


def choreography(services: Iterable[Service]) -> Choreography:
    """Collect the declarations of ``services`` (the same object twice counts once; two
    services of the same name are a ``ConfigurationError``)."""
    by_name: dict[str, Service] = {}
    for service in services:
        if not isinstance(service, Service):
            raise ConfigurationError(f"expected Service objects, got {service!r}")
        known = by_name.setdefault(service.name, service)
        if known is not service:
            raise ConfigurationError(f"two different services are named {service.name!r}")
    uses: set[Use] = set()
    for service in by_name.values():
        for event_type in service.emits:
            uses.add(Use(service.name, "emits", event_type.__event_name__, event_type))
        for event_type in service.requests:
            uses.add(Use(service.name, "requests", event_type.__event_name__, event_type))
        registries: list[tuple[Role, Mapping[str, Handler]]] = [
            ("consumes", service.handlers),
            ("responds", service.responders),
        ]
        for role, registry in registries:
            for handler in registry.values():
                uses.add(Use(service.name, role, handler.event_name, handler.event_type))
                for event_type in handler.emits:
                    uses.add(Use(service.name, "emits", event_type.__event_name__, event_type))
                for event_type in handler.requests:
                    uses.add(Use(service.name, "requests", event_type.__event_name__, event_type))
                if handler.reply_type is not None:
                    reply = handler.reply_type
                    uses.add(Use(service.name, "replies", reply.__event_name__, reply))
    return Choreography(
        tuple(sorted(by_name.values(), key=lambda s: s.name)),
        tuple(sorted(uses, key=Use.sort_key)),
    )


def render(graph: Choreography, fmt: str) -> str:
    """``graph`` as ``mermaid``, ``dot`` or ``json`` text (ending with a newline)."""
    if fmt == "mermaid":
        return to_mermaid(graph)
    if fmt == "dot":
        return to_dot(graph)
    if fmt == "json":
        return json.dumps(to_json(graph), indent=2) + "\n"
    raise ConfigurationError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def to_json(graph: Choreography) -> dict[str, Any]:
    """Services, events, requests and request edges as plain data, sorted."""
    return {
        "services": [
            {
                "name": name,
                "partitions": graph.partitions(name),
                "consumes": graph.of(name, "consumes"),
                "emits": graph.of(name, "emits"),
                "requests": graph.of(name, "requests"),
                "responds": [
                    {"request": request, "reply": graph.reply_of(request, name)}
                    for request in graph.of(name, "responds")
                ],
            }
            for name in graph.service_names
        ],
        "events": [
            {
                "name": event,
                "key": graph.key_of(event),
                "emitted_by": graph.who("emits", event),
                "consumed_by": graph.who("consumes", event),
            }
            for event in graph.events
        ],
        "requests": [
            {
                "name": request,
                "reply": graph.reply_of(request),
                "requested_by": graph.who("requests", request),
                "responded_by": graph.who("responds", request),
            }
            for request in graph.requests
        ],
        "request_edges": [
            {
                "requester": edge.requester,
                "responder": edge.responder,
                "request": edge.request,
                "reply": edge.reply,
            }
            for edge in graph.request_edges
        ],
    }


def _ids(prefix: str, names: Iterable[str]) -> dict[str, str]:
    """Node identifiers Mermaid accepts: ``prefix_name`` with other characters as ``_``."""
    ids: dict[str, str] = {}
    for name in names:
        base = f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
        node, n = base, 1
        while node in ids.values():
            n += 1
            node = f"{base}_{n}"
        ids[name] = node
    return ids


def to_mermaid(graph: Choreography) -> str:
    """A Mermaid flowchart: services are boxes (a partitioned one with its partition count),
    events hexagons (their fanout exchanges; a keyed one with its ordering key), requests
    dotted arrows from requester to responder."""
    services = _ids("s", graph.service_names)
    events = _ids("e", graph.events)
    lines = ["flowchart LR"]
    lines += [f'    {node}["{graph.service_label(name)}"]' for name, node in services.items()]
    lines += [f'    {node}{{{{"{graph.event_label(name)}"}}}}' for name, node in events.items()]
    for event, node in events.items():
        lines += [f"    {services[s]} --> {node}" for s in graph.who("emits", event)]
        lines += [f"    {node} --> {services[s]}" for s in graph.who("consumes", event)]
    edges = graph.request_edges
    if any(edge.responder is None for edge in edges):
        lines.append('    nobody(["no responder"])')
    for edge in edges:
        target = "nobody" if edge.responder is None else services[edge.responder]
        lines.append(f'    {services[edge.requester]} -.->|"{edge.label}"| {target}')
    return "\n".join(lines) + "\n"


def to_dot(graph: Choreography) -> str:
    """A Graphviz digraph, same shapes as the Mermaid one (``dot -Tsvg`` draws it)."""
    lines = ["digraph choreography {", "    rankdir=LR;"]
    for name in graph.service_names:
        lines.append(f'    "service:{name}" [label="{graph.service_label(name)}", shape=box];')
    for name in graph.events:
        lines.append(f'    "event:{name}" [label="{graph.event_label(name)}", shape=hexagon];')
    for event in graph.events:
        lines += [f'    "service:{s}" -> "event:{event}";' for s in graph.who("emits", event)]
        lines += [f'    "event:{event}" -> "service:{s}";' for s in graph.who("consumes", event)]
    edges = graph.request_edges
    if any(edge.responder is None for edge in edges):
        lines.append('    "nobody" [label="no responder", shape=plaintext];')
    for edge in edges:
        target = "nobody" if edge.responder is None else f"service:{edge.responder}"
        lines.append(
            f'    "service:{edge.requester}" -> "{target}" [style=dashed, label="{edge.label}"];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"
