"""payments: charges orders, and declines some.

``charge_payment`` (from the checkout saga): up to ``REVIEW_ABOVE`` euros is captured
(``payment_captured``); above ``DECLINE_ABOVE`` it is declined (``payment_declined``); in
between the payment waits for a manual review that nobody does in the demo, so no answer
comes and the checkout times out. Each order is charged once (``payments`` row per order).
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from choreo import Context, Service

from ..events import ChargePayment, PaymentCaptured, PaymentDeclined
from ..storage import DemoStore, insert

log = logging.getLogger("services.payments")

REVIEW_ABOVE = 500  # euros: a manual review first (no answer in the demo)
DECLINE_ABOVE = 1000  # euros: declined

metadata = sa.MetaData()
payments = sa.Table(
    "payments",
    metadata,
    sa.Column("order_id", sa.String, primary_key=True),
    sa.Column("amount", sa.Integer, nullable=False),
    sa.Column("status", sa.String, nullable=False),  # captured, declined, review
)


def open_store() -> DemoStore:
    """payments' store, where ``CHOREO_DEMO_DB``/``CHOREO_DEMO_DATA`` say now."""
    return DemoStore("payments", metadata)


store = open_store()
service = Service("payments", store=store, concurrency=store.concurrency)


def verdict(amount: int) -> str:
    if amount > DECLINE_ABOVE:
        return "declined"
    return "review" if amount > REVIEW_ABOVE else "captured"


@service.on(ChargePayment, emits=[PaymentCaptured, PaymentDeclined])
async def charge(event: ChargePayment, ctx: Context) -> None:
    outcome = verdict(event.amount)
    written = await ctx.session.execute(
        insert(ctx.session, payments)
        .values(order_id=event.order_id, amount=event.amount, status=outcome)
        .on_conflict_do_nothing()
    )
    if not written.rowcount:  # type: ignore[attr-defined]
        what = "charged already"
    elif outcome == "captured":
        await ctx.publish(PaymentCaptured(order_id=event.order_id, amount=event.amount))
        what = f"{event.amount} EUR captured"
    elif outcome == "declined":
        reason = f"over {DECLINE_ABOVE} EUR"
        await ctx.publish(PaymentDeclined(order_id=event.order_id, reason=reason))
        what = f"{event.amount} EUR declined ({reason})"
    else:
        what = f"{event.amount} EUR held for a manual review: no answer yet"
    log.info(
        f"{event.order_id} {what}",
        extra={
            "service": ctx.service,
            "event": ctx.event_name,
            "sku": "",  # payments knows orders, not SKUs
            "correlation_id": ctx.correlation_id or ctx.message_id,
        },
    )
