"""Payments in PostgreSQL: one row per order, with what was charged and refunded."""

from collections.abc import Iterable, Sequence
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


_ROW = "order_id, customer_id, state, amount, payment_id, charged_amount, refunded_amount"


async def lock(db: asyncpg.Connection, order_id: str) -> PaymentRow | None:
    row = await db.fetchrow(
        f"SELECT {_ROW} FROM payments.payments WHERE order_id = $1 FOR UPDATE", order_id)
    return PaymentRow(*row.values()) if row else None


async def lock_many(db: asyncpg.Connection, order_ids: Iterable[str]) -> dict[str, PaymentRow]:
    """The payments that exist for these orders, locked in order-id order."""
    rows = await db.fetch(f"SELECT {_ROW} FROM payments.payments"
                          " WHERE order_id = ANY($1::text[]) ORDER BY order_id FOR UPDATE",
                          sorted(set(order_ids)))
    return {r["order_id"]: PaymentRow(*r.values()) for r in rows}


@dataclass(frozen=True, slots=True)
class PaymentChange:
    row: PaymentRow
    decline_reason: str | None = None


class ConcurrentChange(Exception):
    """Another transaction wrote a payment this batch took for new; the batch is retried."""

    routine = True  # two replicas on one order's events at once: logged at INFO


def _columns(changes: Sequence[PaymentChange]) -> list[list[object]]:
    rows = [(c.row.order_id, c.row.customer_id, c.row.state, c.row.amount, c.row.payment_id,
             c.row.charged_amount, c.row.refunded_amount, c.decline_reason) for c in changes]
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 8


async def write(db: asyncpg.Connection, new: Sequence[PaymentChange],
                changed: Sequence[PaymentChange]) -> None:
    """Inserts the new payments and updates the changed ones, in one statement. A new payment
    that another transaction inserted meanwhile raises ConcurrentChange (and this one, rolled
    back, runs again over the row that is there now)."""
    order_id, _, state, _, payment_id, charged, refunded, reason = _columns(changed)
    inserted = await db.fetchval(
        "WITH added AS (INSERT INTO payments.payments (order_id, customer_id, state, amount,"
        "  payment_id, charged_amount, refunded_amount, decline_reason)"
        "  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[],"
        "   $6::numeric[], $7::numeric[], $8::text[])"
        "  ON CONFLICT DO NOTHING RETURNING 1),"
        " changed AS (UPDATE payments.payments p SET state = u.state, payment_id = u.payment_id,"
        "  charged_amount = u.charged, refunded_amount = u.refunded,"
        "  decline_reason = coalesce(u.reason, p.decline_reason), updated_at = now()"
        "  FROM unnest($9::text[], $10::text[], $11::text[], $12::numeric[], $13::numeric[],"
        "   $14::text[]) AS u(order_id, state, payment_id, charged, refunded, reason)"
        "  WHERE p.order_id = u.order_id)"
        " SELECT count(*) FROM added",
        *_columns(new), order_id, state, payment_id, charged, refunded, reason)
    if inserted != len(new):
        raise ConcurrentChange(f"{len(new) - inserted} payments were written meanwhile")


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
