"""Payments in PostgreSQL: one row per order, with what was charged and refunded."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal

import asyncpg

from contracts.payments import Payment, PaymentState
from storage.postgres import ConcurrentChange, Write


@dataclass(frozen=True)
class PaymentRow:
    order_id: str
    customer_id: str
    state: PaymentState
    amount: Decimal
    payment_id: str | None
    charged_amount: Decimal
    refunded_amount: Decimal



_ROW = "order_id, customer_id, state, amount, payment_id, charged_amount, refunded_amount"



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


def _columns(changes: Sequence[PaymentChange]) -> list[list[object]]:
    rows = [(c.row.order_id, c.row.customer_id, c.row.state, c.row.amount, c.row.payment_id,
             c.row.charged_amount, c.row.refunded_amount, c.decline_reason) for c in changes]
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 8


def payment_changes(new: Sequence[PaymentChange], changed: Sequence[PaymentChange]) -> Write:
    """Inserts the new payments and updates the changed ones, in one statement. A new payment
    that another transaction inserted meanwhile raises ConcurrentChange (and this one, rolled
    back, runs again over the row that is there now)."""
    order_id, _, state, _, payment_id, charged, refunded, reason = _columns(changed)

    def check(inserted: int) -> None:
        if inserted != len(new):
            raise ConcurrentChange(f"{len(new) - inserted} payments were written meanwhile")

    return Write(
        "added AS (INSERT INTO payments.payments (order_id, customer_id, state, amount,"
        "  payment_id, charged_amount, refunded_amount, decline_reason)"
        "  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[],"
        "   $6::numeric[], $7::numeric[], $8::text[])"
        "  ON CONFLICT DO NOTHING RETURNING 1),"
        " changed AS (UPDATE payments.payments p SET state = u.state, payment_id = u.payment_id,"
        "  charged_amount = u.charged, refunded_amount = u.refunded,"
        "  decline_reason = coalesce(u.reason, p.decline_reason), updated_at = now()"
        "  FROM unnest($9::text[], $10::text[], $11::text[], $12::numeric[], $13::numeric[],"
        "   $14::text[]) AS u(order_id, state, payment_id, charged, refunded, reason)"
        "  WHERE p.order_id = u.order_id)",
        "(SELECT count(*) FROM added)",
        (*_columns(new), order_id, state, payment_id, charged, refunded, reason),
        check)


async def view(db: asyncpg.Connection, order_id: str) -> Payment | None:
    row = await db.fetchrow("SELECT * FROM payments.payments WHERE order_id = $1", order_id)
    return Payment(**dict(row)) if row else None


_ANSWER = "idempotency_key, reference, approved, decline_reason"  # what a ledger row answers


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One call to the sandbox provider, as its ledger records it."""
    key: str  # the caller's idempotency key
    kind: str  # charge or refund
    reference: str  # the provider's own id, should this be the first call under the key
    customer_id: str
    amount: Decimal
    decline_reason: str | None


async def sandbox_answers(pool: asyncpg.Pool, entries: Sequence[LedgerEntry]
                          ) -> dict[str, asyncpg.Record]:
    """The sandbox provider's ledger: the first answer given under each entry's idempotency
    key, by key. One round trip for them all, or two when calls with some of the same keys
    committed while this one waited on them (their rows are then read afresh). Written in key
    order, so two such calls never wait on each other in a cycle. The provider's own
    connection, outside the caller's transaction."""
    entries = sorted(entries, key=lambda e: e.key)
    rows = await pool.fetch(
        "WITH asked AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
        "  $5::numeric[], $6::text[]) AS a(key, kind, reference, customer_id, amount, reason)),"
        " first AS (INSERT INTO payments.sandbox_ledger (idempotency_key, kind, reference,"
        "  customer_id, amount, approved, decline_reason)"
        "  SELECT key, kind, reference, customer_id, amount, reason IS NULL, reason FROM asked"
        "  ORDER BY key ON CONFLICT (idempotency_key) DO NOTHING"
        f"  RETURNING {_ANSWER})"
        f" SELECT * FROM first UNION ALL SELECT {_ANSWER}"
        " FROM payments.sandbox_ledger WHERE idempotency_key = ANY($1::text[])",
        *([getattr(e, f.name) for e in entries] for f in fields(LedgerEntry)))
    answers = {r["idempotency_key"]: r for r in rows}
    if waited := sorted({e.key for e in entries} - answers.keys()):
        answers |= {r["idempotency_key"]: r for r in await pool.fetch(
            f"SELECT {_ANSWER} FROM payments.sandbox_ledger"
            " WHERE idempotency_key = ANY($1::text[])", waited)}
    return answers
