"""The events the catalog emits as a consequence of stock changes."""

from contracts.events import (
    Event,
    InventoryLow,
    InventoryReservationFailed,
    InventoryReserved,
    StockItem,
)
from handlers.catalog.holds import Transition
from storage.catalog import StockChange


def low_stock_events(change: StockChange) -> list[Event]:
    return [InventoryLow(product_id=low.product_id, available=low.available,
                         threshold=low.threshold) for low in change.low]


def _items(change: StockChange) -> list[StockItem]:
    return [StockItem(product_id=p, quantity=q) for p, q in change.lines]


def reservation_events(order_id: str, transition: Transition) -> list[Event]:
    """InventoryReserved or InventoryReservationFailed, when the payment moved the hold."""
    if not transition.applied:
        return []
    if transition.after == "reserved":
        return [InventoryReserved(order_id=order_id, items=_items(transition.change)),
                *low_stock_events(transition.change)]
    if transition.after == "failed":
        return [InventoryReservationFailed(
            order_id=order_id, items=_items(transition.change),
            reason="the hold expired before payment and the stock is no longer available")]
    return []
