"""Orders the saga left waiting too long (before PAID or RESERVED) are cancelled, so a customer is
never left with an order that neither completes nor fails, and its stock and money come back."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from faststream.context import ContextRepo

from contracts.events import OrderCancelled
from handlers.orders.service import SCHEMA, orders
from storage import orders as store
from storage import outbox

log = logging.getLogger("atlantic.orders")

SWEEP_BATCH = 200
DEADLINE_REASON = "the order was not completed in time"


async def cancel_overdue(pool, deadline_seconds: float) -> list[str]:
    """Cancels one batch of overdue orders; every replica may run this, each takes other rows."""
    async with pool.acquire() as db, db.transaction():
        overdue = await store.overdue(db, deadline_seconds, SWEEP_BATCH)
        for order_id in overdue:
            await store.set_status(db, order_id, "CANCELLED", DEADLINE_REASON,
                                   cancellation_reason=DEADLINE_REASON)
            await outbox.add(db, SCHEMA, OrderCancelled(order_id=order_id,
                                                        cancellation_reason=DEADLINE_REASON))
    return overdue


async def _sweep_forever(context: ContextRepo) -> None:
    settings = context.get("settings")
    while True:
        try:
            if cancelled := await cancel_overdue(context.get("pool"),
                                                 settings.order_deadline_seconds):
                log.warning("cancelled %d orders past their deadline", len(cancelled))
        except asyncio.CancelledError:
            raise
        except Exception:  # PostgreSQL away: the orders wait for the next sweep
            log.warning("order deadline sweep failed; will retry", exc_info=True)
        await asyncio.sleep(settings.order_sweep_seconds)


@orders.lifespan
@contextlib.asynccontextmanager
async def deadline_sweeper(context: ContextRepo) -> AsyncIterator[None]:
    task = asyncio.create_task(_sweep_forever(context), name="orders-deadline-sweeper")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
