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
