"""The payments set: one charge per order through a PaymentProvider, refunds on cancel and
return (DESIGN "The order saga", steps 3 and 6)."""

import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated

from faststream.context import ContextRepo

from contracts.errors import NotFound
from contracts.events import (
    OrderCancelled,
    OrderCreated,
    OrderReturned,
    OrderValidated,
    PaymentProcessed,
)
from contracts.orders import ORDER_EVENTS, OrderLifecycleEvent
from contracts.payments import GET, GetPayment, Payment
from handlers.deps import Admin, Context, Db
from handlers.handler_set import HandlerSet
from handlers.payments.provider import PaymentProvider, SandboxProvider
from storage import inbox, outbox
from storage import payments as store
from storage.postgres import open_pool

SCHEMA = "payments"
CONSUMER = "payments-orders"

payments = HandlerSet("payments", "Charges and refunds, one charge per order",
                      outbox_schema=SCHEMA)


class OrderNotYetKnown(Exception):
    """OrderValidated came before this set saw OrderCreated; JetStream redelivers it later."""

    routine = True  # events of one order overtake each other; logged at INFO


@payments.lifespan
@contextlib.asynccontextmanager
async def payment_provider(context: ContextRepo) -> AsyncIterator[None]:
    """The provider is an outside system with connections of its own: a charge made while the
    handler holds its own connection must never wait for one from the handlers' pool."""
    settings = context.get("settings")
    declined = frozenset(c.strip() for c in settings.sandbox_declined_customers.split(",") if c)
    pool = await open_pool(settings.postgres_dsn, 4)
    context.set_global("payment_provider",
                       SandboxProvider(pool, settings.sandbox_decline_above, declined))
    try:
        yield
    finally:
        await pool.close()


Provider = Annotated[PaymentProvider, Context("payment_provider")]


async def _charge(db: Db, provider: PaymentProvider, event: OrderValidated) -> None:
    payment = await store.lock(db, event.order_id)
    if payment is None:
        raise OrderNotYetKnown(f"no OrderCreated seen yet for order {event.order_id}")
    if payment.state != "PENDING":
        return  # voided by a cancel that came first, or already charged
    result = await provider.charge(f"charge-{payment.order_id}", payment.customer_id,
                                   payment.amount)
    if result.approved:
        await store.update(db, payment.order_id, "CHARGED", payment_id=result.payment_id,
                           charged_amount=payment.amount)
    else:
        await store.update(db, payment.order_id, "DECLINED", payment_id=result.payment_id,
                           decline_reason=result.decline_reason)
    await outbox.add(db, SCHEMA, PaymentProcessed(
        order_id=payment.order_id, payment_id=result.payment_id,
        payment_status="SUCCESS" if result.approved else "FAILED", amount=payment.amount))


async def _refund(db: Db, provider: PaymentProvider, order_id: str, amount: Decimal | None,
                  why: str) -> None:
    """Gives back `amount` (all that is left when None) of a charge; voids an uncharged one."""
    payment = await store.lock(db, order_id)
    if payment is None:  # the cancel overtook the order: make sure no charge follows it
        await store.remember_order(db, order_id, "", Decimal(0), "VOIDED")
        return
    if payment.state == "PENDING":
        await store.update(db, order_id, "VOIDED")
        return
    left = payment.charged_amount - payment.refunded_amount
    amount = left if amount is None else min(amount, left)
    if payment.state not in ("CHARGED", "REFUNDED") or amount <= 0:
        return
    await provider.refund(f"refund-{why}-{order_id}", payment.payment_id, payment.customer_id,
                          amount)
    await store.update(db, order_id, "REFUNDED",
                       refunded_amount=payment.refunded_amount + amount)
    await outbox.add(db, SCHEMA, PaymentProcessed(
        order_id=order_id, payment_id=payment.payment_id, payment_status="REFUNDED",
        amount=amount))


@payments.event(ORDER_EVENTS, durable=CONSUMER)
async def charge_or_refund(event: OrderLifecycleEvent, db: Db, provider: Provider) -> None:
    """Charges validated orders once, refunds cancelled and returned ones; each event once."""
    if not isinstance(event, OrderCreated | OrderValidated | OrderCancelled | OrderReturned):
        return
    async with db.transaction():
        if not await inbox.first_time(db, SCHEMA, CONSUMER, event.event_id):
            return
        match event:
            case OrderCreated():
                await store.remember_order(db, event.order_id, event.customer_id,
                                           Decimal(event.total_price))
            case OrderValidated(is_valid=True):
                await _charge(db, provider, event)
            case OrderCancelled():
                await _refund(db, provider, event.order_id, None, "cancel")
            case OrderReturned():
                await _refund(db, provider, event.order_id, Decimal(event.refund_amount),
                              "return")


@payments.request(GET)
async def get_payment(req: GetPayment, _: Admin, db: Db) -> Payment:
    """The payment of one order: its state, and what was charged and refunded."""
    payment = await store.view(db, req.order_id)
    if payment is None:
        raise NotFound("payment for order", req.order_id)
    return payment
