"""orders' HTTP side: ``POST /orders``.

The endpoint writes the order row and stages ``order_placed`` in one transaction of
orders' store (``store.transaction()``): the event goes out if and only if the order was
stored, and the app's bus relays it once committed (``connect(stores=[store])``). The
checkout saga, inventory and payments run elsewhere, with ``choreo run``, or in this
process (``create_app(services=...)``).

Run it beside the services (``pip install uvicorn``), with the same
``CHOREO_BROKER_URL``, ``CHOREO_NAMESPACE``, ``CHOREO_DEMO_DATA`` or ``CHOREO_DEMO_DB``::

    uvicorn services.orders.http:app

    curl -i -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"sku": "SKU-1", "quantity": 2, "amount": 120}'
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, status
from pydantic import BaseModel, Field

from choreo import Service, connect

from .. import orders
from ..events import OrderPlaced

__all__ = ["OrderIn", "OrderTaken", "app", "create_app"]


class OrderIn(BaseModel):
    """An order of ``quantity`` units of ``sku`` for ``amount`` (whole euros). A client
    that sends its own ``order_id`` can repeat the request safely (409 the second time)."""

    order_id: str | None = Field(default=None, min_length=1, max_length=64)
    sku: str = Field(min_length=1)
    quantity: int = Field(ge=1)
    amount: int = Field(ge=0)


class OrderTaken(BaseModel):
    order_id: str
    status: str
    message_id: str  # of order_placed: committed, sent by the relay


def create_app(
    url: str | None = None, namespace: str | None = None, *, services: Sequence[Service] = ()
) -> FastAPI:
    """The app on the broker at ``url`` (else ``CHOREO_BROKER_URL``) in ``namespace`` (else
    ``CHOREO_NAMESPACE``), on orders' store; ``services`` run in its process."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with connect(url, namespace=namespace, stores=[orders.store]) as bus:
            app.state.bus = bus
            if services:
                await bus.start(*services)
            yield

    app = FastAPI(title="orders", lifespan=lifespan)

    @app.post("/orders", status_code=status.HTTP_202_ACCEPTED)
    async def place_order(order: OrderIn) -> OrderTaken:
        """Store the order and tell everyone (``order_placed``), in one transaction."""
        placed = OrderPlaced(
            order_id=order.order_id or f"o-{uuid.uuid4().hex[:12]}",
            sku=order.sku,
            quantity=order.quantity,
            amount=order.amount,
        )
        async with orders.store.transaction() as tx:
            message_id = await orders.place(tx, placed)
        if message_id is None:
            raise HTTPException(status.HTTP_409_CONFLICT, f"order {placed.order_id} exists")
        return OrderTaken(order_id=placed.order_id, status=orders.PLACED, message_id=message_id)

    return app


app = create_app()
