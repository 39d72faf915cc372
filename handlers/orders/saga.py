"""The saga's events, applied to orders' statuses through the one state machine (lifecycle).

A batch is applied in memory, event by event in stream order, over the orders it names (locked
once), and written in one statement: an order may move twice in one batch (VALIDATED, then PAID).
"""

import logging
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import Field

from contracts.events import (
    INVENTORY_RESERVATION_FAILED,
    INVENTORY_RESERVED,
    ORDER_VALIDATED,
    PAYMENT_PROCESSED,
    InventoryReservationFailed,
    InventoryReserved,
    OrderCancelled,
    OrderValidated,
    PaymentProcessed,
)
from contracts.orders import OrderStatus
from handlers.batches import EventBatch
from handlers.orders import metrics, orders
from handlers.orders.lifecycle import step
from storage import orders as store

log = logging.getLogger("atlantic.orders")

LIFECYCLE_CONSUMER = "orders-lifecycle"
RESERVATION_FAILED_CONSUMER = "orders-reservation-failed"

# What the catalog and payments report about an order; the orders set's own events need nothing.
SagaReport = Annotated[OrderValidated | PaymentProcessed | InventoryReserved,
                       Field(discriminator="event")]
OrderEvent = OrderValidated | PaymentProcessed | InventoryReserved | InventoryReservationFailed


class OrderBook:
    """The batch's orders, moved in memory as its events are applied; then written at once."""

    def __init__(self, batch: EventBatch[OrderEvent], found: dict[str, store.OrderRow]):
        self.batch, self.orders = batch, found
        self.changes = store.SagaChanges()
        self.moves: list[tuple[OrderStatus, OrderStatus, datetime | None, datetime]] = []

    @classmethod
    async def open(cls, batch: EventBatch[OrderEvent]) -> "OrderBook":
        return cls(batch, await store.lock_many(batch.db, {e.order_id for e in batch.events}))

    def move(self, event: OrderEvent, target: OrderStatus, note: str | None = None, *,
             after: OrderStatus | None = None, charged: Decimal | None = None) -> None:
        """Applies one event at most once. `charged` is recorded whatever the status: money
        that moved is a fact even for an order cancelled meanwhile (its refund follows, and
        must net out against it)."""
        order_id = event.order_id
        order = self.orders.get(order_id)
        if order is None:
            self.changes.ignore(event.event_id, order_id, event.event, "UNKNOWN",
                                "no such order")
            return
        verdict = step(order.status, target, after)
        if verdict.verdict == "early":
            self.batch.retry_later(event, f"{event.event} for order {order_id}: {verdict.reason}")
            return
        if charged is not None:
            self.changes.paid[order_id] = charged
        if verdict.verdict == "ignore":
            log.info("ignored %s for order %s: %s", event.event, order_id, verdict.reason)
            self.changes.ignore(event.event_id, order_id, event.event, order.status,
                                verdict.reason)
            return
        if verdict.verdict == "duplicate":
            return
        if target == "CANCELLED":
            self.changes.cancellation_reason[order_id] = note
            self.batch.emit(OrderCancelled(order_id=order_id, cancellation_reason=note))
        now = datetime.now(UTC)
        self.moves.append((order.status, target, order.changed_at, now))
        self.orders[order_id] = replace(order, status=target, changed_at=now)
        self.changes.move(order_id, target, note)

    def write(self) -> None:
        self.batch.write(store.order_changes(self.changes))
        self.batch.after_commit(self._count)

    async def _count(self) -> None:
        for move in self.moves:
            metrics.moved(*move)


@orders.event(ORDER_VALIDATED, PAYMENT_PROCESSED, INVENTORY_RESERVED, durable=LIFECYCLE_CONSUMER)
async def track_order_status(batch: EventBatch[SagaReport]) -> None:
    """Moves orders on what the catalog and payments report."""
    book = await OrderBook.open(batch)
    for event in batch.events:
        match event:
            case OrderValidated(is_valid=True):
                book.move(event, "VALIDATED")
            case OrderValidated(is_valid=False):
                reason = "validation failed: " + "; ".join(event.validation_errors)
                book.move(event, "CANCELLED", reason[:500])
            case PaymentProcessed(payment_status="SUCCESS"):
                book.move(event, "PAID", charged=Decimal(event.amount))
            case PaymentProcessed(payment_status="FAILED"):
                book.move(event, "CANCELLED", "payment declined", after="VALIDATED")
            case PaymentProcessed(payment_status="REFUNDED"):
                book.changes.refund(event.order_id, Decimal(event.amount))
            case InventoryReserved():
                book.move(event, "RESERVED")
    book.write()


@orders.event(INVENTORY_RESERVATION_FAILED, durable=RESERVATION_FAILED_CONSUMER)
async def on_reservation_failed(batch: EventBatch[InventoryReservationFailed]) -> None:
    """Paid, but the stock went while the payment took too long: cancel (payments refunds)."""
    book = await OrderBook.open(batch)
    for event in batch.events:
        book.move(event, "CANCELLED", f"stock could not be reserved: {event.reason}"[:500],
                  after="PAID")
    book.write()
