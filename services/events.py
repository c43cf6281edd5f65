"""The contract the demo services share: every event and request they exchange."""

from __future__ import annotations

from choreo import Event


class SkuReceived(Event):
    """A warehouse reports how many units of a SKU it holds (absolute, not a delta)."""

    sku: str
    quantity: int
    warehouse: str


class SkuProcessed(Event):
    """Inventory recorded new numbers for a SKU. Only the identifier: ask for the rest."""

    sku: str


class GetAvailability(Event):
    """Request: how many units of ``sku`` can be sold now?"""

    sku: str


class Availability(Event):
    """Reply to ``GetAvailability``. ``version`` grows with every stock change of the SKU,
    so a consumer can ignore an answer older than one it already applied."""

    sku: str
    available: int
    version: int


# -- the checkout (orders, the checkout saga, inventory's reservations, payments) ---------
# Amounts are whole euros: the demo keeps money simple.


class OrderPlaced(Event):
    """orders took an order (``POST /orders``): the checkout saga starts."""

    order_id: str
    sku: str
    quantity: int
    amount: int


class ReserveStock(Event):
    """Command (checkout to inventory): hold ``quantity`` units of ``sku`` for the order."""

    order_id: str
    sku: str
    quantity: int


class StockReserved(Event):
    order_id: str
    sku: str
    quantity: int


class StockUnavailable(Event):
    """inventory could not reserve: fewer units available than ordered."""

    order_id: str
    sku: str
    available: int


class ReleaseStock(Event):
    """Compensation (checkout to inventory): give back what was reserved for the order
    (nothing if nothing was; a later ``ReserveStock`` of that order is refused)."""

    order_id: str
    sku: str


class ChargePayment(Event):
    """Command (checkout to payments)."""

    order_id: str
    amount: int


class PaymentCaptured(Event):
    order_id: str
    amount: int


class PaymentDeclined(Event):
    order_id: str
    reason: str


class CheckoutExpired(Event):
    """The checkout's timeout, scheduled by the saga when the order is placed."""

    order_id: str


class OrderConfirmed(Event):
    order_id: str


class OrderCancelled(Event):
    order_id: str
    reason: str
