"""inventory's HTTP side: ``POST /skus``, for a warehouse that reports incoming stock over
HTTP rather than with ``sku_received``.

The endpoint writes the stock row and stages ``sku_processed`` in one transaction of
inventory's store (``store.transaction()``): the event goes out if and only if the number
was stored, and the app's bus relays it once committed (``connect(stores=[store])``). The
handlers of ``sku_processed`` (inventory, catalog, wishlist) run elsewhere, with
``choreo run``, or in this process (``create_app(services=...)``).

Run it beside the services (uvicorn is not installed with the demo: ``pip install
uvicorn``), with the same ``CHOREO_BROKER_URL``, ``CHOREO_NAMESPACE``, ``CHOREO_DEMO_DATA``
or ``CHOREO_DEMO_DB`` as they have::

    uvicorn services.inventory.http:app

    curl -i -X POST localhost:8000/skus -H 'content-type: application/json' \\
         -d '{"sku": "SKU-3", "warehouse": "south", "quantity": 5}'
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, status
from pydantic import BaseModel, Field

from choreo import Service, connect

from .. import inventory
from ..events import SkuProcessed, SkuReceived

__all__ = ["SkuIn", "SkuRecorded", "app", "create_app"]


class SkuIn(BaseModel):
    """What a warehouse reports: how many units of a SKU it holds (absolute, not a delta)."""

    sku: str = Field(min_length=1)
    warehouse: str = Field(min_length=1)
    quantity: int = Field(ge=0)


class SkuRecorded(BaseModel):
    sku: str
    changed: bool  # false: the warehouse reported the number inventory had already
    message_id: str  # of sku_processed: committed, sent by the relay


def create_app(
    url: str | None = None, namespace: str | None = None, *, services: Sequence[Service] = ()
) -> FastAPI:
    """The app on the broker at ``url`` (else ``CHOREO_BROKER_URL``) in ``namespace`` (else
    ``CHOREO_NAMESPACE``), on inventory's store; ``services`` run in its process."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with connect(url, namespace=namespace, stores=[inventory.store]) as bus:
            app.state.bus = bus
            if services:
                await bus.start(*services)
            yield

    app = FastAPI(title="inventory", lifespan=lifespan)

    @app.post("/skus", status_code=status.HTTP_202_ACCEPTED)
    async def report_sku(report: SkuIn) -> SkuRecorded:
        """Record the number, and tell everyone (``sku_processed``), in one transaction."""
        async with inventory.store.transaction() as tx:
            changed = await inventory.record(tx.session, SkuReceived(**report.model_dump()))
            message_id = await tx.publish(SkuProcessed(sku=report.sku))
        return SkuRecorded(sku=report.sku, changed=changed, message_id=message_id)

    return app


app = create_app()
