"""The tooling commands of ``choreo``: ``graph``, ``check`` and ``asyncapi`` read what
services declare in code; ``publish`` sends one event from the command line."""

from __future__ import annotations

import asyncio
import enum
from pathlib import Path
from typing import Annotated

import typer

from . import config
from .asyncapi import dump, generate
from .bus import connect
from .check import check as check_choreography
from .cli_support import BrokerOption, DebugOption, NamespaceOption, errors, fail, warn
from .errors import Unroutable
from .graph import Choreography, choreography, render
from .loader import load_service
from .publish import message_for, publish_json, read_payload
from .topology import exchange_name

__all__ = ["UNROUTABLE_EXIT", "register"]

UNROUTABLE_EXIT = 3

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

    
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

    
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
            help="json or yaml (yaml needs choreo[yaml]); default: yaml for a -o file "
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

    
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


def publish(
    event_name: Annotated[
        str, typer.Argument(help="The event's name, e.g. sku_received.", metavar="EVENT_NAME")
    ],
    payload: Annotated[
        str,
        typer.Argument(
            help="The event's fields as a JSON object, or @FILE holding it (@- reads stdin).",
            metavar="JSON_OR_@FILE",
        ),
    ],
    broker: BrokerOption = None,
    namespace: NamespaceOption = None,
    correlation_id: Annotated[
        str | None, typer.Option("--correlation-id", help="correlation_id of the message.")
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Publish one event to its exchange; print its message id once the broker confirmed.

    
    Examples:
      choreo publish sku_received '{"sku": "SKU-3", "quantity": 5, "warehouse": "north"}'
      choreo publish sku_received @report.json --namespace staging --correlation-id r-42
      echo '{"sku": "SKU-3"}' | choreo publish sku_processed @-

    The message follows the wire contract (JSON body, persistent, message_id, timestamp,
    type=EVENT_NAME); the payload is not checked against any model. Exit 0: confirmed.
    Exit 3: confirmed, but no queue is bound to the event's exchange, so nobody receives
    it (a warning on stderr). Exit 2: bad JSON, unreadable @FILE, bad name or URL. Exit 1:
    the broker cannot be reached or did not confirm.
    """
    with errors(debug):
        fields = read_payload(payload)
        message_for(event_name, fields)  # a bad name fails before connecting
        bus = connect(broker, namespace=namespace, connection_name="choreo publish")

        async def send() -> str:
            async with bus:
                return await publish_json(bus, event_name, fields, correlation_id=correlation_id)

        try:
            message_id = asyncio.run(send())
        except Unroutable:
            warn(
                f"no queue is bound to exchange {exchange_name(bus.namespace, event_name)!r}: "
                f"nobody consumes {event_name!r} there, so the event was dropped "
                "(start its consumers, or run `choreo topology --apply`, first)"
            )
            raise typer.Exit(UNROUTABLE_EXIT) from None
    typer.echo(message_id)


def register(app: typer.Typer) -> None:
    """Add the commands to the ``choreo`` application."""
    app.command()(graph)
    app.command()(check)
    app.command()(asyncapi)
    app.command()(publish)
