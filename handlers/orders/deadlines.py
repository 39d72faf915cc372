"""Orders the saga left waiting too long (before PAID or RESERVED) are cancelled, so a customer is
never left with an order that neither completes nor fails, and its stock and money come back."""

import logging

import asyncpg
from faststream.context import ContextRepo

from contracts.events import OrderCancelled
from handlers.orders import SCHEMA, metrics, orders
from storage import orders as store
from storage import outbox

log = logging.getLogger("atlantic.orders")

SWEEP_BATCH = 200
DEADLINE_REASON = "the order was not completed in time"


@orders.periodic("order_sweep_seconds")
async def cancel_overdue_orders(context: ContextRepo) -> list[str]:
    """Cancels the orders past their deadline, one batch a round."""
    cancelled = await cancel_overdue(context.get("pool"),
                                     context.get("settings").order_deadline_seconds)
    if cancelled:
        log.warning("cancelled %d orders past their deadline", len(cancelled))
    return cancelled


async def cancel_overdue(pool: asyncpg.Pool, deadline_seconds: float) -> list[str]:
    """Cancels one batch of overdue orders; every replica may run this, each takes other rows."""
    async with pool.acquire() as db, db.transaction():
        overdue = await store.overdue(db, deadline_seconds, SWEEP_BATCH)
        for order_id in overdue:
            await store.set_status(db, order_id, "CANCELLED", DEADLINE_REASON,
                                   cancellation_reason=DEADLINE_REASON)
            await outbox.add(db, SCHEMA, OrderCancelled(order_id=order_id,
                                                        cancellation_reason=DEADLINE_REASON))
    for status in overdue.values():
        metrics.moved(status, "CANCELLED")
    return list(overdue)
