"""``choreo graph``, ``check`` and ``asyncapi``: read what services declare in code; they
touch no broker."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from .. import config
from ..tooling.asyncapi import dump, generate
from ..tooling.check import check as check_choreography
from ..tooling.graph import Choreography, choreography, render
from ._common import DebugOption, NamespaceOption, errors, fail
from .loader import load_service

__all__ = ["asyncapi", "check", "graph"]

TargetsArgument = Annotated[
    list[str],
    typer.Argument(
        help="Services, as MODULE:ATTRIBUTE (e.g. services.catalog:service).",
        metavar="TARGET",
    ),
]


class GraphFormat(enum.StrEnum):
    mermaid = "mermaid"
    dot = "dot"
    json = "json"


class DocumentFormat(enum.StrEnum):
    json = "json"
    yaml = "yaml"


def _load(targets: list[str]) -> Choreography:
    return choreography([load_service(target) for target in targets])


def graph(
    targets: TargetsArgument,
    fmt: Annotated[
        GraphFormat, typer.Option("--format", "-f", help="Mermaid flowchart, Graphviz or JSON.")
    ] = GraphFormat.mermaid,
    debug: DebugOption = False,
) -> None:
    """Print the choreography map: which service emits, consumes, asks and answers what.

    \b
    Examples:
      choreo graph services.warehouse:service services.inventory:service
          services.catalog:service services.wishlist:service > choreography.mmd
      choreo graph services.inventory:service services.catalog:service -f dot | dot -Tsvg
      choreo graph services.inventory:service --format json

    Services are boxes, events hexagons (their fanout exchanges), requests dotted arrows
    from the requester to the responder, labelled request / reply. It is read from the
    declarations (handlers, emits=, requests=, @responds); the output is sorted, the same
    for the same code.
    """
    with errors(debug):
        typer.echo(render(_load(targets), fmt.value), nl=False)


def check(
    targets: TargetsArgument,
    external: Annotated[
        list[str] | None,
        typer.Option(
            "--external",
            metavar="NAME",
            help="An event or request that crosses the boundary of the given services "
            "(emitted or consumed elsewhere); repeat for several.",
        ),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on warnings too.")] = False,
    debug: DebugOption = False,
) -> None:
    """Check the services' declarations as one choreography; exit 1 when one is broken.

    \b
    Examples:
      choreo check services.warehouse:service services.inventory:service
          services.catalog:service services.wishlist:service
      choreo check services.inventory:service services.catalog:service
          --external sku_received

    Errors (exit 1): an event consumed but emitted by none of the services, a request sent
    that none answers, a request answered by two services, one event name declared with
    incompatible schemas. Warnings (exit 0 unless --strict): an event emitted that none
    consumes, a request answered that none sends, an --external name nobody uses.
    One line per problem, then a summary.
    """
    with errors(debug):
        found = _load(targets)
        problems = check_choreography(found, external or ())
    for problem in problems:
        typer.echo(str(problem))
    count = sum(problem.level == "error" for problem in problems)
    warned = len(problems) - count
    summary = (
        f"{len(found.services)} service(s), {len(found.events)} event(s), "
        f"{len(found.requests)} request(s)"
    )
    if problems:
        typer.echo(f"{summary}: {count} error(s), {warned} warning(s)")
    else:
        typer.echo(f"ok: {summary}, no problems")
    if count or (strict and warned):
        raise typer.Exit(1)


def asyncapi(
    targets: TargetsArgument,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file instead of standard output."),
    ] = None,
    fmt: Annotated[
        DocumentFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="json or yaml (yaml needs choreo-mq[yaml]); default: yaml for a -o file "
            "ending in .yaml or .yml, else json.",
            show_default=False,
        ),
    ] = None,
    namespace: NamespaceOption = None,
    title: Annotated[str | None, typer.Option(help="info.title of the document.")] = None,
    api_version: Annotated[str, typer.Option(help="info.version of the document.")] = "1.0.0",
    debug: DebugOption = False,
) -> None:
    """Write an AsyncAPI 3.0.0 document of the services, from their declarations.

    \b
    Examples:
      choreo asyncapi services.warehouse:service services.inventory:service
          services.catalog:service services.wishlist:service -o asyncapi.yaml
      choreo asyncapi services.inventory:service --namespace staging > asyncapi.json

    One channel per event exchange (and one for requests, one for replies), one operation
    per handler (receive) and per emitted event or request (send), message payloads as the
    events' pydantic JSON schemas in components. Channel addresses carry the namespace.
    """
    chosen = fmt or (
        DocumentFormat.yaml
        if output is not None and output.suffix.lower() in (".yaml", ".yml")
        else DocumentFormat.json
    )
    with errors(debug):
        document = generate(
            _load(targets), namespace=config.namespace(namespace), title=title, version=api_version
        )
        text = dump(document, chosen.value)
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {str(output)!r}: {exc.strerror or exc}", 1)
    typer.echo(f"wrote {output} (AsyncAPI 3.0.0, {chosen.value})")
