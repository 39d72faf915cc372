"""Payments in PostgreSQL: one row per order, with what was charged and refunded."""

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from contracts.payments import Payment, PaymentState
from storage.postgres import assignments


@dataclass(frozen=True)
class PaymentRow:
    order_id: str
    customer_id: str
    state: PaymentState
    amount: Decimal
    payment_id: str | None
    charged_amount: Decimal
    refunded_amount: Decimal


async def remember_order(db: asyncpg.Connection, order_id: str, customer_id: str,
                         amount: Decimal, state: PaymentState = "PENDING") -> None:
    """Learns an order's amount; a row already there (even a VOIDED one) wins."""
    await db.execute(
        "INSERT INTO payments.payments (order_id, customer_id, state, amount)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING", order_id, customer_id, state, amount)


async def lock(db: asyncpg.Connection, order_id: str) -> PaymentRow | None:
    row = await db.fetchrow(
        "SELECT order_id, customer_id, state, amount, payment_id, charged_amount,"
        " refunded_amount FROM payments.payments WHERE order_id = $1 FOR UPDATE", order_id)
    return PaymentRow(*row.values()) if row else None


_SETTABLE = {"payment_id", "charged_amount", "refunded_amount", "decline_reason"}


async def update(db: asyncpg.Connection, order_id: str, state: PaymentState, **columns: object
                 ) -> None:
    also = assignments(columns, _SETTABLE, first=3)
    await db.execute(
        f"UPDATE payments.payments SET state = $2, updated_at = now(){also}"
        " WHERE order_id = $1", order_id, state, *columns.values())


async def view(db: asyncpg.Connection, order_id: str) -> Payment | None:
    row = await db.fetchrow("SELECT * FROM payments.payments WHERE order_id = $1", order_id)
    return Payment(**dict(row)) if row else None


async def ledger_charges(db: asyncpg.Connection | asyncpg.Pool, customer_id: str) -> int:
    """How many charges the provider made for a customer (tests prove one per order)."""
    return await db.fetchval(
        "SELECT count(*) FROM payments.sandbox_ledger WHERE kind = 'charge' AND customer_id = $1",
        customer_id)
