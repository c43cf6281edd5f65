"""warehouse: the feed that reports stock, one ``sku_received`` per SKU and warehouse.

python -m services.warehouse feed services/warehouse/sample.csv [--broker URL]
python -m services.warehouse feed --sku SKU-1 --quantity 5 [--warehouse north]

The feed handles nothing, so it is not run with ``choreo run``; ``service`` declares what
it publishes, so that ``choreo graph``/``check``/``asyncapi services.warehouse:service ...``
see where ``sku_received`` comes from.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterable
from pathlib import Path

from choreo import Bus, Service

from ..events import SkuReceived

SAMPLE = Path(__file__).with_name("sample.csv")
service = Service("warehouse", emits=[SkuReceived])


def read_csv(path: Path) -> list[SkuReceived]:
    """Rows ``sku,quantity,warehouse`` (with that header) as events; a bad row is an error."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"sku", "quantity", "warehouse"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append(SkuReceived.model_validate(row))
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
    return rows


async def feed(bus: Bus, reports: Iterable[SkuReceived]) -> list[str]:
    """Publish every report; returns the message ids once the broker confirmed them all."""
    return list(await asyncio.gather(*(bus.publish(report) for report in reports)))
