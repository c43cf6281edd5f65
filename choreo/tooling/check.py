"""``choreo check``: what the given services declare, checked as one choreography.

Errors (the choreography cannot work as declared):

* an event is consumed, but none of the services emits it
* a request is sent, but none of the services answers it
* two services answer the same request (the requester gets whichever answers first)
* one event name is declared with incompatible schemas (their pydantic JSON schemas differ,
  titles and descriptions aside)
* one event name is declared with different ordering keys (``Event`` ``key=``): its
  publishers would put one key's events in different buckets, so partitioned consumers
  would lose their order

Warnings: an event emitted that nobody consumes, a request answered that nobody sends, an
external name that none of the services uses (a typo?), a partitioned service that
consumes an event without an ordering key (spread over its partitions, in no order).
Names given as ``external`` cross the boundary of the given services (a feed without
choreo, a consumer elsewhere): neither a missing emitter nor a missing consumer is reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ..events import Event
from .graph import Choreography, qualname

__all__ = ["Problem", "check", "comparable_schema"]

_NOT_SCHEMA_KEYS = ("title", "description", "examples")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of :func:`check`, printed as ``error: ...`` or ``warning: ...``."""

    level: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def check(graph: Choreography, external: Iterable[str] = ()) -> list[Problem]:
    """The problems of ``graph``: errors first, each group sorted by event name."""
    outside = set(external)
    errors: list[Problem] = []
    warnings: list[Problem] = []
    for event in graph.events:
        emitters, consumers = graph.who("emits", event), graph.who("consumes", event)
        if event in outside:
            continue
        if consumers and not emitters:
            errors.append(
                Problem(
                    "error",
                    f"event {event!r} is consumed by {_names(consumers)} but emitted by none of "
                    f"the given services (declare emits=[...], give its emitter, or --external "
                    f"{event})",
                )
            )
        elif emitters and not consumers:
            warnings.append(
                Problem(
                    "warning",
                    f"event {event!r} is emitted by {_names(emitters)} but consumed by none of "
                    "the given services",
                )
            )
    for request in graph.requests:
        requesters, responders = graph.who("requests", request), graph.who("responds", request)
        if len(responders) > 1:
            errors.append(
                Problem(
                    "error",
                    f"request {request!r} is answered by {_names(responders)}: the requester "
                    "gets whichever answers first",
                )
            )
        if request in outside:
            continue
        if requesters and not responders:
            errors.append(
                Problem(
                    "error",
                    f"request {request!r} is sent by {_names(requesters)} but none of the given "
                    "services responds to it",
                )
            )
        elif responders and not requesters:
            warnings.append(
                Problem(
                    "warning",
                    f"request {request!r} is answered by {_names(responders)} but sent by none "
                    "of the given services",
                )
            )
    errors.extend(_schema_conflicts(graph))
    errors.extend(_key_conflicts(graph))
    warnings.extend(_unordered(graph))
    used = {use.name for use in graph.uses}
    for name in sorted(outside - used):
        warnings.append(
            Problem("warning", f"--external {name}: none of the given services uses {name!r}")
        )
    return errors + warnings


def _names(services: list[str]) -> str:
    return ", ".join(services)


def _schema_conflicts(graph: Choreography) -> list[Problem]:
    problems = []
    for name in sorted({use.name for use in graph.uses}):
        schemas: dict[str, list[type[Event]]] = {}
        for event_type in graph.types(name):
            schemas.setdefault(_key(comparable_schema(event_type)), []).append(event_type)
        if len(schemas) < 2:
            continue
        groups = [
            f"{', '.join(map(qualname, types))} ({_where(graph, name, types)})"
            for types in schemas.values()
        ]
        first, *others = (comparable_schema(types[0]) for types in schemas.values())
        fields = sorted({f for other in others for f in _differing_fields(first, other)})
        detail = f"; fields that differ: {', '.join(fields)}" if fields else ""
        problems.append(
            Problem(
                "error",
                f"{name!r} has incompatible schemas: {' vs '.join(groups)}{detail}",
            )
        )
    return problems


def _key_conflicts(graph: Choreography) -> list[Problem]:
    problems = []
    for name in sorted({use.name for use in graph.uses}):
        keys: dict[str | None, list[type[Event]]] = {}
        for event_type in graph.types(name):
            keys.setdefault(event_type.__event_key__, []).append(event_type)
        if len(keys) > 1:
            groups = [
                f"{', '.join(map(qualname, types))} (key={key!r})" for key, types in keys.items()
            ]
            problems.append(
                Problem(
                    "error",
                    f"{name!r} has different ordering keys: {' vs '.join(groups)}; its "
                    "publishers would route one key's events to different partitions",
                )
            )
    return problems


def _unordered(graph: Choreography) -> list[Problem]:
    problems = []
    for service in graph.services:
        if not service.partitions:
            continue
        for name, handler in sorted(service.handlers.items()):
            if handler.event_type.__event_key__ is None:
                problems.append(
                    Problem(
                        "warning",
                        f"{service.name} is partitioned but {name!r} has no ordering key "
                        "(Event key=): its events are spread over the partitions in no order",
                    )
                )
    return problems


def _where(graph: Choreography, name: str, types: list[type[Event]]) -> str:
    """``inventory emits, catalog consumes``: who declares ``name`` as one of ``types``."""
    uses = [u for u in graph.uses if u.name == name and u.event_type in types]
    return ", ".join(f"{u.service} {u.role}" for u in sorted(uses, key=lambda u: u.service))


def comparable_schema(event_type: type[Event]) -> dict[str, Any]:
    """The pydantic JSON schema of ``event_type`` without titles, descriptions and examples
    (what two classes may differ in and still read each other's messages)."""
    stripped = _strip(event_type.model_json_schema())
    assert isinstance(stripped, dict)
    return stripped


def _strip(node: object) -> object:
    if isinstance(node, list):
        return [_strip(item) for item in node]
    if not isinstance(node, dict):
        return node
    result: dict[str, object] = {}
    for key, value in node.items():
        if key in _NOT_SCHEMA_KEYS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            result[key] = {name: _strip(schema) for name, schema in value.items()}
        else:
            result[key] = _strip(value)
    return result


def _key(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True)


def _differing_fields(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    """Top-level fields present in one schema only, typed differently, or required in one."""
    props_a, props_b = a.get("properties", {}), b.get("properties", {})
    required_a, required_b = set(a.get("required", ())), set(b.get("required", ()))
    return {
        field
        for field in set(props_a) | set(props_b)
        if props_a.get(field) != props_b.get(field)
        or (field in required_a) != (field in required_b)
    }
