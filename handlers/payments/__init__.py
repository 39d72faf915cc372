"""The payments set: one charge per order through a PaymentProvider, refunds on cancel and
return (DESIGN "The order saga", steps 3 and 6).

This module is the set itself: its HandlerSet, and the payment provider its handlers charge
through. The handlers are in saga.py (the order events) and requests.py, imported at the end,
so that they find the set here when they register on it.
"""

import contextlib
from collections.abc import AsyncIterator

from faststream.context import ContextRepo

from handlers.handler_set import HandlerSet
from handlers.payments.provider import SandboxProvider
from storage.postgres import open_pool

SCHEMA = "payments"
CONSUMER = "payments-orders"

payments = HandlerSet("payments", "Charges and refunds, one charge per order",
                      outbox_schema=SCHEMA)


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


# The handlers, registered on the set as they are imported (they import the set from here).
from handlers.payments import requests, saga  # noqa: E402

__all__ = ["payments", "requests", "saga"]
