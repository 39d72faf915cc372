"""The saga's events, applied to an order's status through the one state machine (lifecycle)."""

import logging
from decimal import Decimal

from contracts.events import (
    INVENTORY_RESERVATION_FAILED,
    Event,
    InventoryReservationFailed,
    InventoryReserved,
    OrderCancelled,
    OrderValidated,
    PaymentProcessed,
)
from contracts.orders import ORDER_EVENTS, OrderLifecycleEvent, OrderStatus
from handlers.deps import Db
from handlers.orders.lifecycle import step
from handlers.orders.service import SCHEMA, orders
from storage import inbox, outbox
from storage import orders as store

log = logging.getLogger("atlantic.orders")

LIFECYCLE_CONSUMER = "orders-lifecycle"
RESERVATION_FAILED_CONSUMER = "orders-reservation-failed"


class EventTooEarly(Exception):
    """A step before this event has not been applied yet; JetStream redelivers it later."""

    routine = True  # events of one order overtake each other; logged at INFO


async def _move(db: Db, consumer: str, event: Event, order_id: str, target: OrderStatus,
                note: str | None = None, *, after: OrderStatus | None = None,
                charged: Decimal | None = None, **columns: object) -> None:
    """Applies one event at most once: inbox mark, status change and events in one transaction.
    `charged` is recorded whatever the status: money that moved is a fact even for an order
    cancelled meanwhile (its refund follows, and must net out against it)."""
    async with db.transaction():
        if not await inbox.first_time(db, SCHEMA, consumer, event.event_id):
            return
        order = await store.lock(db, order_id)
        if order is None:
            await store.record_ignored(db, event.event_id, order_id, event.event, "UNKNOWN",
                                       "no such order")
            return
        verdict = step(order.status, target, after)
        if verdict.verdict == "early":
            raise EventTooEarly(f"{event.event} for order {order_id}: {verdict.reason}")
        if charged is not None:
            await store.record_charge(db, order_id, charged)
        if verdict.verdict == "ignore":
            log.info("ignored %s for order %s: %s", event.event, order_id, verdict.reason)
            await store.record_ignored(db, event.event_id, order_id, event.event, order.status,
                                       verdict.reason)
            return
        if verdict.verdict == "duplicate":
            return
        if target == "CANCELLED":
            columns["cancellation_reason"] = note
            await outbox.add(db, SCHEMA, OrderCancelled(order_id=order_id,
                                                        cancellation_reason=note))
        await store.set_status(db, order_id, target, note, **columns)


async def _refunded(db: Db, event: PaymentProcessed) -> None:
    async with db.transaction():
        if await inbox.first_time(db, SCHEMA, LIFECYCLE_CONSUMER, event.event_id):
            await store.add_refund(db, event.order_id, Decimal(event.amount))


@orders.event(ORDER_EVENTS, durable=LIFECYCLE_CONSUMER)
async def track_order_status(event: OrderLifecycleEvent, db: Db) -> None:
    """Moves the order on what the catalog and payments report; its own events need nothing."""
    match event:
        case OrderValidated(is_valid=True):
            await _move(db, LIFECYCLE_CONSUMER, event, event.order_id, "VALIDATED")
        case OrderValidated(is_valid=False):
            reason = "validation failed: " + "; ".join(event.validation_errors)
            await _move(db, LIFECYCLE_CONSUMER, event, event.order_id, "CANCELLED", reason[:500])
        case PaymentProcessed(payment_status="SUCCESS"):
            await _move(db, LIFECYCLE_CONSUMER, event, event.order_id, "PAID",
                        charged=Decimal(event.amount))
        case PaymentProcessed(payment_status="FAILED"):
            await _move(db, LIFECYCLE_CONSUMER, event, event.order_id, "CANCELLED",
                        "payment declined", after="VALIDATED")
        case PaymentProcessed(payment_status="REFUNDED"):
            await _refunded(db, event)
        case InventoryReserved():
            await _move(db, LIFECYCLE_CONSUMER, event, event.order_id, "RESERVED")


@orders.event(INVENTORY_RESERVATION_FAILED, durable=RESERVATION_FAILED_CONSUMER)
async def on_reservation_failed(event: InventoryReservationFailed, db: Db) -> None:
    """Paid, but the stock went while the payment took too long: cancel (payments refunds)."""
    await _move(db, RESERVATION_FAILED_CONSUMER, event, event.order_id, "CANCELLED",
                f"stock could not be reserved: {event.reason}"[:500], after="PAID")
