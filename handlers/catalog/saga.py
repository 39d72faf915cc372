"""The catalog's part in the order saga (DESIGN "The order saga").

Each consumer applies a batch of events through one StockBook: the holds of the batch's orders
and the stock of their products, locked once, moved in memory event by event, written in one
statement with the inbox marks and the events they cause. An event that does not apply to its
order's hold (a late duplicate, a ship before payment) is recorded and acked. The products a
batch moved leave the cache once it is committed.
"""

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

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
from handlers.catalog.events import low_stock_events, reservation_events
from handlers.catalog.service import catalog
from storage.cache import ProductCache
from storage.catalog import StockBook, Transition

log = logging.getLogger("atlantic.catalog")

HOLD = "catalog-hold-stock"
SETTLE = "catalog-settle-payment"
CANCEL = "catalog-release-cancelled"
SHIP = "catalog-ship-stock"
RETURN = "catalog-restock-returned"


@asynccontextmanager
async def _stock_of(batch: EventBatch, products: Iterable[str] = ()) -> AsyncIterator[StockBook]:
    """The batch's book: opened over its orders (and these products), written at the end."""
    book = await StockBook.open(batch.db, {e.order_id for e in batch.events}, products)
    yield book
    await book.write(batch.db)
    if touched := sorted(book.touched):
        cache: ProductCache = batch.context.get("product_cache")
        batch.after_commit(lambda: cache.invalidate(*touched))


def _note_ignored(consumer: str, order_id: str, transition: Transition) -> None:
    if not transition.applied:
        log.info("%s: order %s is %s here; event recorded, nothing to do",
                 consumer, order_id, transition.before or "unknown")


@catalog.event(ORDER_CREATED, durable=HOLD)
async def hold_stock(batch: EventBatch[OrderCreated]) -> None:
    """Checks every item of each new order and holds its stock; emits OrderValidated."""
    hold_seconds = batch.context.get("settings").hold_seconds
    async with _stock_of(batch, {i.product_id for e in batch.events for i in e.items}) as book:
        for event in batch.events:
            items = [(item.product_id, item.quantity) for item in event.items]
            verdict = book.place_hold(event.order_id, items, hold_seconds)
            if verdict is None:
                log.info("%s: order %s was already decided; event recorded", HOLD,
                         event.order_id)
                continue
            batch.emit(OrderValidated(order_id=event.order_id, is_valid=verdict.placed,
                                      validation_errors=verdict.errors),
                       *low_stock_events(verdict.change))


@catalog.event(PAYMENT_PROCESSED, durable=SETTLE)
async def settle_payment(batch: EventBatch[PaymentProcessed]) -> None:
    """SUCCESS turns the hold into a reservation (InventoryReserved, or reservation_failed when
    an expired hold's stock is gone); FAILED releases the hold. REFUNDED moves no stock: the
    cancel or return that caused it does."""
    async with _stock_of(batch) as book:
        for event in batch.events:
            if event.payment_status == "REFUNDED":
                continue
            transition = book.reserve(event.order_id) if event.payment_status == "SUCCESS" \
                else book.move(event.order_id, "payment_failed")
            _note_ignored(SETTLE, event.order_id, transition)
            batch.emit(*reservation_events(event.order_id, transition))


async def _move_each(batch: EventBatch, consumer: str, move: str) -> None:
    async with _stock_of(batch) as book:
        for event in batch.events:
            _note_ignored(consumer, event.order_id, book.move(event.order_id, move))


@catalog.event(ORDER_CANCELLED, durable=CANCEL)
async def release_cancelled(batch: EventBatch[OrderCancelled]) -> None:
    """Gives a cancelled order's held or reserved stock back."""
    await _move_each(batch, CANCEL, "cancel")


@catalog.event(ORDER_SHIPPED, durable=SHIP)
async def ship_stock(batch: EventBatch[OrderShipped]) -> None:
    """The reserved stock leaves the warehouse, and on-hand stock with it."""
    await _move_each(batch, SHIP, "ship")


@catalog.event(ORDER_RETURNED, durable=RETURN)
async def restock_returned(batch: EventBatch[OrderReturned]) -> None:
    """Returned items go back into on-hand stock."""
    await _move_each(batch, RETURN, "return")
