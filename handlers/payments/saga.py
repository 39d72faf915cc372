"""The payments side of the order saga: a charge for each valid order, a refund for each cancel
and return, written a batch at a time."""

import asyncio
from dataclasses import replace
from decimal import Decimal
from typing import Annotated

from pydantic import Field

from contracts.events import (
    ORDER_CANCELLED,
    ORDER_CREATED,
    ORDER_RETURNED,
    ORDER_VALIDATED,
    OrderCancelled,
    OrderCreated,
    OrderReturned,
    OrderValidated,
    PaymentProcessed,
)
from contracts.payments import PaymentState
from handlers.batches import EventBatch
from handlers.payments import CONSUMER, payments
from handlers.payments.provider import PaymentProvider
from storage import payments as store

# The order events payments act on, told apart by their "event" field.
PaymentEvent = Annotated[OrderCreated | OrderValidated | OrderCancelled | OrderReturned,
                         Field(discriminator="event")]


class PaymentBook:
    """The batch's payments, changed in memory event by event, then written in one statement.
    Each order's events are applied in order; different orders' at once, since a provider's
    answer takes a network round trip."""

    def __init__(self, batch: EventBatch[PaymentEvent], found: dict[str, store.PaymentRow]):
        self.batch, self.payments = batch, found
        self.provider: PaymentProvider = batch.context.get("payment_provider")
        self.new: set[str] = set()
        self.changed: set[str] = set()
        self.decline_reasons: dict[str, str | None] = {}

    @classmethod
    async def open(cls, batch: EventBatch[PaymentEvent]) -> "PaymentBook":
        return cls(batch, await store.lock_many(batch.db, {e.order_id for e in batch.events}))

    async def apply(self, events: list[PaymentEvent]) -> None:
        for event in events:
            match event:
                case OrderCreated():
                    self._remember(event.order_id, event.customer_id,
                                   Decimal(event.total_price), "PENDING")
                case OrderValidated(is_valid=True):
                    await self._charge(event)
                case OrderCancelled():
                    await self._refund(event.order_id, None, "cancel")
                case OrderReturned():
                    await self._refund(event.order_id, Decimal(event.refund_amount), "return")

    def _remember(self, order_id: str, customer_id: str, amount: Decimal,
                  state: PaymentState) -> None:
        """Learns an order's amount; a payment already there (even a VOIDED one) wins."""
        if order_id not in self.payments:
            self.payments[order_id] = store.PaymentRow(order_id, customer_id, state, amount,
                                                       None, Decimal(0), Decimal(0))
            self.new.add(order_id)

    def _set(self, order_id: str, state: PaymentState, **fields: object) -> None:
        self.payments[order_id] = replace(self.payments[order_id], state=state, **fields)
        self.changed.add(order_id)

    async def _charge(self, event: OrderValidated) -> None:
        payment = self.payments.get(event.order_id)
        if payment is None:
            self.batch.retry_later(event, f"no OrderCreated seen yet for order {event.order_id}")
            return
        if payment.state != "PENDING":
            return  # voided by a cancel that came first, or already charged
        result = await self.provider.charge(f"charge-{payment.order_id}", payment.customer_id,
                                            payment.amount)
        if result.approved:
            self._set(payment.order_id, "CHARGED", payment_id=result.payment_id,
                      charged_amount=payment.amount)
        else:
            self._set(payment.order_id, "DECLINED", payment_id=result.payment_id)
            self.decline_reasons[payment.order_id] = result.decline_reason
        self.batch.emit(PaymentProcessed(
            order_id=payment.order_id, payment_id=result.payment_id,
            payment_status="SUCCESS" if result.approved else "FAILED", amount=payment.amount))

    async def _refund(self, order_id: str, amount: Decimal | None, why: str) -> None:
        """Gives back `amount` (all that is left when None) of a charge; voids an uncharged
        one; remembers a cancel that overtook its order, so no charge follows it."""
        payment = self.payments.get(order_id)
        if payment is None:
            self._remember(order_id, "", Decimal(0), "VOIDED")
            return
        if payment.state == "PENDING":
            self._set(order_id, "VOIDED")
            return
        left = payment.charged_amount - payment.refunded_amount
        amount = left if amount is None else min(amount, left)
        if payment.state not in ("CHARGED", "REFUNDED") or amount <= 0:
            return
        await self.provider.refund(f"refund-{why}-{order_id}", payment.payment_id,
                                   payment.customer_id, amount)
        self._set(order_id, "REFUNDED", refunded_amount=payment.refunded_amount + amount)
        self.batch.emit(PaymentProcessed(
            order_id=order_id, payment_id=payment.payment_id, payment_status="REFUNDED",
            amount=amount))

    def write(self) -> None:
        def change(order_id: str) -> store.PaymentChange:
            return store.PaymentChange(self.payments[order_id],
                                       self.decline_reasons.get(order_id))

        self.batch.write(store.payment_changes(
            [change(o) for o in sorted(self.new)],
            [change(o) for o in sorted(self.changed - self.new)]))


@payments.event(ORDER_CREATED, ORDER_VALIDATED, ORDER_CANCELLED, ORDER_RETURNED, durable=CONSUMER)
async def charge_or_refund(batch: EventBatch[PaymentEvent]) -> None:
    """Charges validated orders once, refunds cancelled and returned ones; each event once."""
    book = await PaymentBook.open(batch)
    by_order: dict[str, list[PaymentEvent]] = {}
    for event in batch.events:
        by_order.setdefault(event.order_id, []).append(event)
    await asyncio.gather(*(book.apply(events) for events in by_order.values()))
    book.write()
