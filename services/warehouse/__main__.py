"""``python -m services.warehouse feed ...``: report stock from a CSV file or one SKU."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from choreo import ChoreoError, connect

from ..events import SkuReceived
from . import feed, read_csv

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """The warehouse feed of the SKU choreography demo."""


@app.command("feed")
def feed_command(
    csv_file: Annotated[
        Path | None, typer.Argument(help="CSV with columns sku,quantity,warehouse.")
    ] = None,
    sku: Annotated[str | None, typer.Option(help="Report one SKU instead of a file.")] = None,
    quantity: Annotated[int, typer.Option(min=0, help="Units held (with --sku).")] = 0,
    warehouse: Annotated[str, typer.Option(help="Warehouse name (with --sku).")] = "main",
    broker: Annotated[str | None, typer.Option(envvar="CHOREO_BROKER_URL")] = None,
    namespace: Annotated[str | None, typer.Option(envvar="CHOREO_NAMESPACE")] = None,
) -> None:
    """Publish sku_received for each row of CSV_FILE, or for --sku/--quantity."""
    if (csv_file is None) == (sku is None):
        raise typer.BadParameter("give a CSV file or --sku (and --quantity), not both")
    try:
        reports = (
            read_csv(csv_file)
            if csv_file is not None
            else [SkuReceived(sku=sku or "", quantity=quantity, warehouse=warehouse)]
        )
    except (OSError, ValueError) as exc:
        typer.echo(f"warehouse: error: {exc}", err=True)
        raise typer.Exit(2) from None

    async def run() -> int:
        async with connect(broker, namespace=namespace) as bus:
            return len(await feed(bus, reports))

    try:
        count = asyncio.run(run())
    except ChoreoError as exc:
        typer.echo(f"warehouse: error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"published {count} sku_received event(s), all confirmed")


if __name__ == "__main__":
    app()
