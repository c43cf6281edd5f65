"""An orders web app on FastAPI: the bus opened in the app's lifespan, an endpoint that
publishes an event, one that asks another service (request-response, its errors mapped to
HTTP statuses), and a service whose handlers run in the same process as the app.

Run it (uvicorn is not installed with choreo: ``pip install uvicorn``)::

    uvicorn examples.fastapi_app.app:app               # memory://: everything in one process

    CHOREO_BROKER_URL=amqp://guest:guest@localhost:5672/ CHOREO_NAMESPACE=shop \\
        uvicorn examples.fastapi_app.app:app           # on RabbitMQ

then::

    curl -i -X POST localhost:8000/orders -H 'content-type: application/json' \\
         -d '{"sku": "SKU-1", "quantity": 2}'         # 202 {"order_id": ..., "message_id": ...}
    curl -i localhost:8000/stock/SKU-1                 # 200 {"sku": "SKU-1", "available": 8}
    curl -i localhost:8000/stock/NOPE                  # 502: the responder raised UnknownSku

``CHOREO_BROKER_URL`` (default ``memory://`` here, where ``connect()`` alone would default
to a local RabbitMQ) and ``CHOREO_NAMESPACE`` (default ``shop``) are choreo's own variables.
The ``stock`` service keeps its state in a dict, so it belongs to one process; a real one
keeps it in a database and may run beside the app as here, or in workers of its own
(``choreo run``), with ``create_app(services=())`` serving only the HTTP side.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from pydantic import BaseModel, Field

from choreo import (
    Bus,
    ConnectionFailed,
    Event,
    InvalidReply,
    NoResponder,
    PublishError,
    Reject,
    RemoteError,
    RequestTimeout,
    Service,
    connect,
)

__all__ = [
    "GetStock",
    "OrderAccepted",
    "OrderIn",
    "OrderPlaced",
    "Stock",
    "StockLevel",
    "UnknownSku",
    "app",
    "create_app",
    "stock_service",
]

DEFAULT_URL = "memory://"
DEFAULT_NAMESPACE = "shop"
DEFAULT_STOCK = {"SKU-1": 10, "SKU-2": 3}


# -- the contract: what travels on the bus -----------------------------------------------


class OrderPlaced(Event):  # published as "order_placed"
    order_id: str
    sku: str
    quantity: int


class GetStock(Event):  # a request, answered by the stock service
    sku: str


class StockLevel(Event):  # its reply
    sku: str
    available: int


# -- the stock service: its handlers run in the web app's process -------------------------


class UnknownSku(LookupError):
    """No stock is kept for this SKU; the requester gets it as ``RemoteError``."""


class Stock:
    """The stock service's state: units available per SKU, and the orders already applied."""

    def __init__(self, available: Mapping[str, int] | None = None) -> None:
        self.available = dict(DEFAULT_STOCK if available is None else available)
        self.orders: dict[str, OrderPlaced] = {}


def stock_service(stock: Stock) -> Service:
    """The ``stock`` service on ``stock``: it reserves what is ordered and tells its levels."""
    service = Service("stock")

    @service.on(OrderPlaced)
    async def reserve(order: OrderPlaced) -> None:
        if order.order_id in stock.orders:  # at-least-once: a redelivery changes nothing
            return
        if order.sku not in stock.available:
            raise Reject(f"no stock is kept for {order.sku!r}")  # dead-lettered, no retries
        stock.orders[order.order_id] = order
        stock.available[order.sku] = max(0, stock.available[order.sku] - order.quantity)

    @service.responds(GetStock)
    async def level(query: GetStock) -> StockLevel:
        if query.sku not in stock.available:
            raise UnknownSku(f"no stock is kept for {query.sku!r}")
        return StockLevel(sku=query.sku, available=stock.available[query.sku])

    return service


# -- the HTTP side -----------------------------------------------------------------------


class OrderIn(BaseModel):
    sku: str = Field(min_length=1)
    quantity: int = Field(gt=0)


class OrderAccepted(BaseModel):
    order_id: str
    message_id: str


def get_bus(request: Request) -> Bus:
    """The bus the lifespan opened (a dependency of the endpoints)."""
    bus: Bus = request.app.state.bus
    return bus


BusDep = Annotated[Bus, Depends(get_bus)]
router = APIRouter()


@router.post("/orders", status_code=status.HTTP_202_ACCEPTED)
async def place_order(order: OrderIn, bus: BusDep) -> OrderAccepted:
    """Publish ``order_placed``; 202 once the broker has it, before anyone handled it."""
    order_id = uuid.uuid4().hex
    event = OrderPlaced(order_id=order_id, sku=order.sku, quantity=order.quantity)
    try:
        # the order id as correlation id: every event that follows from it carries it too
        message_id = await bus.publish(event, correlation_id=order_id)
    except (PublishError, ConnectionFailed) as exc:  # not confirmed, or nobody consumes it
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from exc
    return OrderAccepted(order_id=order_id, message_id=message_id)


@router.get("/stock/{sku}")
async def stock_level(sku: str, request: Request, bus: BusDep) -> StockLevel:
    """Ask the stock service; its failures become 502, 503 and 504."""
    timeout: float = request.app.state.request_timeout
    try:
        return await bus.request(GetStock(sku=sku), StockLevel, timeout=timeout)
    except RequestTimeout as exc:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, detail=str(exc)) from exc
    except RemoteError as exc:  # the responder raised
        detail = {"type": exc.type, "message": exc.message, "service": exc.service}
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=detail) from exc
    except InvalidReply as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=str(exc)) from exc
    except (NoResponder, ConnectionFailed) as exc:  # no service answers GetStock now
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc)) from exc


def create_app(
    url: str | None = None,
    namespace: str | None = None,
    *,
    services: Sequence[Service] | None = None,
    request_timeout: float = 2.0,
) -> FastAPI:
    """The orders app on the broker at ``url`` (else ``CHOREO_BROKER_URL``, else
    ``memory://``), in ``namespace`` (else ``CHOREO_NAMESPACE``, else ``shop``).

    ``services`` run in the app's process while it serves: by default the stock service on
    a fresh :class:`Stock`; ``()`` for none (they run elsewhere). ``request_timeout``: how
    long ``GET /stock/{sku}`` waits for the stock service's answer.
    """
    url = url or os.environ.get("CHOREO_BROKER_URL") or DEFAULT_URL
    if namespace is None:
        namespace = os.environ.get("CHOREO_NAMESPACE") or DEFAULT_NAMESPACE
    running = tuple(services) if services is not None else (stock_service(Stock()),)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # on_unroutable="raise": an order that no queue receives is an error (503), not a
        # warning in the log; on RabbitMQ, `choreo topology --apply` declares the queues
        async with connect(url, namespace=namespace, on_unroutable="raise") as bus:
            app.state.bus = bus
            if running:
                await bus.start(*running)  # consumes on the app's event loop
            yield
            # leaving the block stops consuming (handlers in flight finish), then closes

    app = FastAPI(title="orders", lifespan=lifespan)
    app.state.request_timeout = request_timeout
    app.include_router(router)
    return app


app = create_app()
