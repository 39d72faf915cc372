"""The catalog's part in the order saga (DESIGN "The order saga").

One consumer takes every order event that moves stock. A batch goes through one StockBook: the
holds of the batch's orders and the stock of their products, locked once, moved in memory event
by event in stream order, written in one statement with the inbox marks and the events it
causes. An event that does not apply to its order's hold (a late duplicate, a ship before
payment) is recorded and acked. The products a batch moved leave the cache once it is committed.
"""

import logging
from typing import Annotated

from pydantic import Field

from contracts.events import (
    ORDER_CANCELLED,
    ORDER_CREATED,
    ORDER_RETURNED,
    ORDER_SHIPPED,
    PAYMENT_PROCESSED,
    OrderCancelled,
    OrderCreated,
    OrderReturned,
    OrderShipped,
    OrderValidated,
    PaymentProcessed,
)
from handlers.batches import EventBatch
from handlers.catalog import catalog
from handlers.catalog.events import low_stock_events, reservation_events
from handlers.catalog.holds import StockBook, Transition
from storage.cache import ProductCache

log = logging.getLogger("atlantic.catalog")

STOCK_CONSUMER = "catalog-stock"
# The consumers it took over, one per event, before events came in batches.
FORMER_CONSUMERS = ("catalog-hold-stock", "catalog-settle-payment", "catalog-release-cancelled",
                    "catalog-ship-stock", "catalog-restock-returned")

StockEvent = Annotated[
    OrderCreated | PaymentProcessed | OrderCancelled | OrderShipped | OrderReturned,
    Field(discriminator="event")]

# What each event that releases or moves a hold's stock does to it (holds.MOVES).
_MOVES = {OrderCancelled: "cancel", OrderShipped: "ship", OrderReturned: "return"}


@catalog.event(ORDER_CREATED, PAYMENT_PROCESSED, ORDER_CANCELLED, ORDER_SHIPPED, ORDER_RETURNED,
               durable=STOCK_CONSUMER, replaces=FORMER_CONSUMERS)
async def move_stock(batch: EventBatch[StockEvent]) -> None:
    """Holds a new order's stock, reserves it when paid, releases it when the payment fails or
    the order is cancelled, takes it off the shelf when shipped and back when returned."""
    created = {item.product_id for e in batch.events if isinstance(e, OrderCreated)
               for item in e.items}
    book = await StockBook.open(batch.db, {e.order_id for e in batch.events}, created)
    for event in batch.events:
        match event:
            case OrderCreated():
                _hold(batch, book, event)
            case PaymentProcessed(payment_status="REFUNDED"):
                pass  # the cancel or return that caused it moves the stock
            case PaymentProcessed(payment_status=status):
                transition = book.reserve(event.order_id) if status == "SUCCESS" \
                    else book.move(event.order_id, "payment_failed")
                _note_ignored(event, transition)
                batch.emit(*reservation_events(event.order_id, transition))
            case _:
                _note_ignored(event, book.move(event.order_id, _MOVES[type(event)]))
    batch.write(book.changes())
    if touched := sorted(book.touched):
        cache: ProductCache = batch.context.get("product_cache")
        batch.after_commit(lambda: cache.invalidate(*touched))


def _hold(batch: EventBatch[StockEvent], book: StockBook, event: OrderCreated) -> None:
    """Checks every item of a new order and holds its stock; emits OrderValidated."""
    items = [(item.product_id, item.quantity) for item in event.items]
    verdict = book.place_hold(event.order_id, items, batch.context.get("settings").hold_seconds)
    if verdict is None:
        log.info("order %s was already decided; OrderCreated recorded", event.order_id)
        return
    batch.emit(OrderValidated(order_id=event.order_id, is_valid=verdict.placed,
                              validation_errors=verdict.errors),
               *low_stock_events(verdict.change))


def _note_ignored(event: StockEvent, transition: Transition) -> None:
    if not transition.applied:
        log.info("%s: order %s is %s here; event recorded, nothing to do",
                 event.event, event.order_id, transition.before or "unknown")
