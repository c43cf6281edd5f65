"""``choreo publish``: send one event, given as JSON, from the command line.

The message follows the wire contract as ``Bus.publish`` sends it (``Bus.publish_json``):
the JSON object as the body, ``content_type=application/json``, persistent, a new
``message_id``, ``timestamp``, ``type=<event name>``, to the event's durable fanout
exchange, ``mandatory``, confirmed by the broker. The payload is not validated against any
model: consumers validate what they receive (an invalid one is dead-lettered).

Its routing key is the bucket of ``--key``, the event's ordering key (the value of its
``key=`` field), so a partitioned consumer gets it in that key's partition, in order with
the key's other events; without ``--key`` the CLI, which loads no event classes, routes it
by the bucket of its message id (some partition, no order with the key's other events).

The exchange must exist (its consumers' ``choreo run``, or ``choreo topology --apply``,
declares it): a forgotten ``--namespace`` would otherwise leave a stray exchange on the
broker. ``--declare`` declares it when it is missing.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from .. import wire
from ..bus import connect
from ..errors import ConfigurationError, Unroutable
from ..topology import exchange_name
from ._common import BrokerOption, DebugOption, NamespaceOption, errors, fail, warn

__all__ = ["UNROUTABLE_EXIT", "publish", "read_payload"]

UNROUTABLE_EXIT = 3


def read_payload(argument: str, stdin: TextIO | None = None) -> dict[str, Any]:
    """The JSON object in ``argument``, or in the file ``@PATH`` (``@-``: standard input).

    ``ConfigurationError`` with one line saying what is wrong: an unreadable file, text
    that is not JSON, JSON that is not an object.
    """
    source = "the payload"
    text = argument
    if argument.startswith("@"):
        path = argument[1:]
        source = path
        try:
            if path == "-":
                source = "standard input"
                text = (stdin or sys.stdin).read()
            else:
                text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read {path!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigurationError(f"{path!r} is not UTF-8 text: {exc.reason}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(value, dict):
        raise ConfigurationError(
            f"{source} must be a JSON object (an event's fields), not {type(value).__name__}"
        )
    return value


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
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="The event's ordering key (the value of its key= field): partitioned "
            "consumers get it in that key's partition, in order. Without it: routed by "
            "its message id.",
        ),
    ] = None,
    declare: Annotated[
        bool,
        typer.Option(
            "--declare",
            help="Declare the event's exchange when it does not exist (without it, a "
            "missing exchange is an error, exit 1).",
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Publish one event to its exchange; print its message id once the broker confirmed.

    \b
    Examples:
      choreo publish sku_received '{"sku": "SKU-3", "quantity": 5, "warehouse": "north"}'
      choreo publish sku_received @report.json --namespace staging --correlation-id r-42
      echo '{"sku": "SKU-3"}' | choreo publish sku_processed @-
      choreo publish sku_received @report.json --namespace staging --declare
      choreo publish sku_processed '{"sku": "SKU-3", "seq": 4}' --key SKU-3

    The message follows the wire contract (JSON body, persistent, message_id, timestamp,
    type=EVENT_NAME); the payload is not checked against any model. The event's exchange
    must exist (its consumers declare it); --declare creates it when it does not.
    Exit 0: confirmed. Exit 3: confirmed, but no queue is bound to the event's exchange,
    so nobody receives it (a warning on stderr). Exit 2: bad JSON, unreadable @FILE, bad
    name or URL. Exit 1: the broker cannot be reached or did not confirm, or the event's
    exchange does not exist and --declare was not given.
    """
    with errors(debug):
        fields = read_payload(payload)
        wire.check_name("event name", event_name, example="sku_received")  # before connecting
        bus = connect(
            broker, namespace=namespace, connection_name="choreo publish", on_unroutable="raise"
        )

        exchange = exchange_name(bus.namespace, event_name)

        async def send() -> str | None:
            async with bus:
                if not declare and not await bus.transport.exchange_exists(exchange):
                    return None  # publish_json would declare it
                return await bus.publish_json(
                    event_name, fields, correlation_id=correlation_id, key=key
                )

        try:
            message_id = asyncio.run(send())
        except Unroutable:
            warn(
                f"no queue is bound to exchange {exchange!r}: "
                f"nobody consumes {event_name!r} there, so the event was dropped "
                "(start its consumers, or run `choreo topology --apply`, first)"
            )
            raise typer.Exit(UNROUTABLE_EXIT) from None
        if message_id is None:
            fail(
                f"exchange {exchange!r} does not exist on the broker (no service declared it; "
                "check --namespace, or pass --declare to create it)"
            )
    typer.echo(message_id)
