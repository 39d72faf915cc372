"""The catalog's part in the order saga (DESIGN "The order saga").

Each consumer does its work in one transaction with its inbox mark and the events it emits, so a
redelivered event changes nothing and a crash leaves all or none. An event that does not apply
to the order's current hold (a late duplicate, a ship before payment) is recorded and acked.
"""

import logging
from collections.abc import Awaitable, Callable

from contracts.events import (
    ORDER_CANCELLED,
    ORDER_CREATED,
    ORDER_RETURNED,
    ORDER_SHIPPED,
    PAYMENT_PROCESSED,
    Event,
    OrderCancelled,
    OrderCreated,
    OrderReturned,
    OrderShipped,
    OrderValidated,
    PaymentProcessed,
)
from handlers.catalog.events import low_stock_events, reservation_events
from handlers.catalog.service import SCHEMA, Cache, HoldSeconds, catalog
from handlers.deps import Db
from storage import catalog as catalog_db
from storage import inbox, outbox
from storage.catalog import Transition

log = logging.getLogger("atlantic.catalog")

HOLD = "catalog-hold-stock"
SETTLE = "catalog-settle-payment"
CANCEL = "catalog-release-cancelled"
SHIP = "catalog-ship-stock"
RETURN = "catalog-restock-returned"


def _note_ignored(consumer: str, order_id: str, transition: Transition) -> None:
    if not transition.applied:
        log.info("%s: order %s is %s here; event recorded, nothing to do",
                 consumer, order_id, transition.before or "unknown")


async def _emit(db: Db, events: list[Event]) -> None:
    if events:
        await outbox.add(db, SCHEMA, *events)


@catalog.event(ORDER_CREATED, durable=HOLD)
async def hold_stock(event: OrderCreated, db: Db, cache: Cache, hold_seconds: HoldSeconds) -> None:
    """Checks every item of a new order and holds its stock; emits OrderValidated."""
    async with db.transaction():
        if not await inbox.first_time(db, SCHEMA, HOLD, event.event_id):
            return  # a redelivery: its effects are already in
        items = [(item.product_id, item.quantity) for item in event.items]
        verdict = await catalog_db.place_hold(db, event.order_id, items, hold_seconds)
        if verdict is None:
            log.info("%s: order %s was already decided; event recorded", HOLD, event.order_id)
            return
        await _emit(db, [OrderValidated(order_id=event.order_id, is_valid=verdict.placed,
                                        validation_errors=verdict.errors),
                         *low_stock_events(verdict.change)])
    await cache.invalidate(*verdict.change.product_ids)


async def _move_stock_once(db: Db, cache: Cache, consumer: str, event: Event, order_id: str,
                           move: Callable[[Db, str], Awaitable[Transition]],
                           emits: Callable[[Transition], list[Event]] = lambda _: []) -> None:
    """One stock movement per event: the inbox mark, the move and the events it causes commit
    together; the products it touched leave the cache after the commit."""
    async with db.transaction():
        if not await inbox.first_time(db, SCHEMA, consumer, event.event_id):
            return  # a redelivery: its effects are already in
        transition = await move(db, order_id)
        await _emit(db, emits(transition))
    _note_ignored(consumer, order_id, transition)
    await cache.invalidate(*transition.change.product_ids)


@catalog.event(PAYMENT_PROCESSED, durable=SETTLE)
async def settle_payment(event: PaymentProcessed, db: Db, cache: Cache) -> None:
    """SUCCESS turns the hold into a reservation (InventoryReserved, or reservation_failed when
    an expired hold's stock is gone); FAILED releases the hold. REFUNDED moves no stock: the
    cancel or return that caused it does."""
    if event.payment_status == "REFUNDED":
        return
    move = catalog_db.reserve if event.payment_status == "SUCCESS" \
        else catalog_db.release_after_failed_payment
    await _move_stock_once(db, cache, SETTLE, event, event.order_id, move,
                           lambda transition: reservation_events(event.order_id, transition))


@catalog.event(ORDER_CANCELLED, durable=CANCEL)
async def release_cancelled(event: OrderCancelled, db: Db, cache: Cache) -> None:
    """Gives a cancelled order's held or reserved stock back."""
    await _move_stock_once(db, cache, CANCEL, event, event.order_id, catalog_db.cancel)


@catalog.event(ORDER_SHIPPED, durable=SHIP)
async def ship_stock(event: OrderShipped, db: Db, cache: Cache) -> None:
    """The reserved stock leaves the warehouse, and on-hand stock with it."""
    await _move_stock_once(db, cache, SHIP, event, event.order_id, catalog_db.ship)


@catalog.event(ORDER_RETURNED, durable=RETURN)
async def restock_returned(event: OrderReturned, db: Db, cache: Cache) -> None:
    """Returned items go back into on-hand stock."""
    await _move_stock_once(db, cache, RETURN, event, event.order_id, catalog_db.restock)
