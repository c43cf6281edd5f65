"""checkout: the saga that takes an order from ``order_placed`` to confirmed or cancelled.

::

    order_placed      -> reserve_stock (inventory), and schedule checkout_expired
    stock_reserved    -> charge_payment (payments)
    payment_captured  -> order_confirmed                       (the timeout is cancelled)
    payment_declined  -> release_stock + order_cancelled       (compensation)
    stock_unavailable -> order_cancelled                       (nothing to release)
    checkout_expired  -> release_stock + order_cancelled       (no answer in time)

One instance per ``order_id`` in the saga's own database (``choreo_saga``); each step is a
transaction of its store with the event's inbox row and what it publishes. The timeout is
``CHOREO_DEMO_CHECKOUT_TIMEOUT`` seconds (default 900; the demo uses 2).
"""

from __future__ import annotations

import logging
import os

import sqlalchemy as sa
from pydantic import BaseModel

from choreo import Saga, SagaContext

from ..events import (
    ChargePayment,
    CheckoutExpired,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    PaymentCaptured,
    PaymentDeclined,
    ReleaseStock,
    ReserveStock,
    StockReserved,
    StockUnavailable,
)
from ..storage import DemoStore

log = logging.getLogger("services.checkout")

TIMEOUT_VARIABLE = "CHOREO_DEMO_CHECKOUT_TIMEOUT"
DEFAULT_TIMEOUT = 900.0  # seconds: 15 minutes to pay


def timeout() -> float:
    """Seconds an order may wait for its payment: ``CHOREO_DEMO_CHECKOUT_TIMEOUT``."""
    value = float(os.environ.get(TIMEOUT_VARIABLE) or DEFAULT_TIMEOUT)
    if value <= 0:
        raise ValueError(f"{TIMEOUT_VARIABLE}={value}: expected a positive number of seconds")
    return value


class Checkout(BaseModel):
    """The state of one checkout."""

    order_id: str
    sku: str
    quantity: int
    amount: int
    status: str = "reserving"  # paying, confirmed, declined, unavailable, expired
    timeout: str | None = None  # the message id of checkout_expired, to cancel it


def open_store() -> DemoStore:
    """checkout's store, where ``CHOREO_DEMO_DB``/``CHOREO_DEMO_DATA`` say now."""
    return DemoStore("checkout", sa.MetaData())  # choreo's tables only, choreo_saga included


def note(saga: SagaContext[Checkout], what: str) -> None:
    ctx = saga.ctx
    log.info(
        f"{saga.key} {what}",
        extra={
            "service": ctx.service,
            "event": ctx.event_name,
            "sku": saga.state.sku,
            "correlation_id": ctx.correlation_id or ctx.message_id,
        },
    )


async def end(saga: SagaContext[Checkout], status: str) -> None:
    """The instance ends with ``status``: the timeout is no longer needed."""
    if saga.state.timeout and status != "expired":
        await saga.cancel(saga.state.timeout)
    saga.state.status = status
    saga.complete()


def build(store: DemoStore) -> Saga[Checkout]:
    """The checkout saga on ``store``, with its handlers (tests build one on their own
    store)."""
    checkout: Saga[Checkout] = Saga(
        "checkout", state=Checkout, key="order_id", store=store, concurrency=store.concurrency
    )

    @checkout.starts(OrderPlaced, emits=[ReserveStock, CheckoutExpired])
    async def placed(event: OrderPlaced, saga: SagaContext[Checkout]) -> None:
        await saga.publish(
            ReserveStock(order_id=event.order_id, sku=event.sku, quantity=event.quantity)
        )
        seconds = timeout()
        saga.state.timeout = await saga.schedule(CheckoutExpired(order_id=event.order_id), seconds)
        what = f"{event.quantity} x {event.sku} for {event.amount} EUR"
        note(saga, f"{what}: reserve the stock, {seconds:g}s to pay")

    @checkout.on(StockReserved, emits=[ChargePayment])
    async def reserved(event: StockReserved, saga: SagaContext[Checkout]) -> None:
        saga.state.status = "paying"
        await saga.publish(ChargePayment(order_id=event.order_id, amount=saga.state.amount))
        note(saga, f"stock held: charge {saga.state.amount} EUR")

    @checkout.on(StockUnavailable, emits=[OrderCancelled])
    async def unavailable(event: StockUnavailable, saga: SagaContext[Checkout]) -> None:
        await end(saga, "unavailable")
        await saga.publish(OrderCancelled(order_id=event.order_id, reason="out of stock"))
        note(saga, "cancelled: out of stock, nothing to release")

    @checkout.on(PaymentCaptured, emits=[OrderConfirmed])
    async def paid(event: PaymentCaptured, saga: SagaContext[Checkout]) -> None:
        await end(saga, "confirmed")
        await saga.publish(OrderConfirmed(order_id=event.order_id))
        note(saga, "confirmed, the timeout cancelled")

    @checkout.on(PaymentDeclined, emits=[ReleaseStock, OrderCancelled])
    async def declined(event: PaymentDeclined, saga: SagaContext[Checkout]) -> None:
        await end(saga, "declined")
        await saga.publish(ReleaseStock(order_id=event.order_id, sku=saga.state.sku))
        reason = f"payment declined: {event.reason}"
        await saga.publish(OrderCancelled(order_id=event.order_id, reason=reason))
        note(saga, f"{reason}: release the stock (compensation)")

    @checkout.on(CheckoutExpired, emits=[ReleaseStock, OrderCancelled])
    async def expired(event: CheckoutExpired, saga: SagaContext[Checkout]) -> None:
        was = saga.state.status
        await end(saga, "expired")
        await saga.publish(ReleaseStock(order_id=event.order_id, sku=saga.state.sku))
        await saga.publish(OrderCancelled(order_id=event.order_id, reason="no payment in time"))
        note(saga, f"no answer while {was}: release the stock (compensation)")

    return checkout


store = open_store()
service = build(store)  # choreo run services.checkout:service
