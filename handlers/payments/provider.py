"""How money moves: the PaymentProvider interface, and the sandbox provider behind it.

A provider must honour idempotency keys the way real ones do (Stripe, Adyen): the same key
returns the first answer, so a charge retried after a crash is never a second charge.

The sandbox's outcomes are deterministic and documented:
  - a charge above `sandbox_decline_above` (ATLANTIC_SANDBOX_DECLINE_ABOVE, default 10,000.00)
    is declined with "amount exceeds the sandbox limit";
  - a charge for a customer listed in ATLANTIC_SANDBOX_DECLINED_CUSTOMERS is declined with
    "card declined";
  - every other charge, and every refund, is approved.
"""

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import asyncpg

from contracts.base import new_id


@dataclass(frozen=True)
class ChargeResult:
    payment_id: str
    approved: bool
    decline_reason: str | None = None


class PaymentProvider(Protocol):
    async def charge(self, idempotency_key: str, customer_id: str,
                     amount: Decimal) -> ChargeResult: ...

    async def refund(self, idempotency_key: str, payment_id: str, customer_id: str,
                     amount: Decimal) -> str: ...


class SandboxProvider:
    """Keeps its own ledger in PostgreSQL, outside the caller's transaction, as an outside
    provider would: what it did stays done even when the caller rolls back."""

    def __init__(self, pool: asyncpg.Pool, decline_above: Decimal,
                 declined_customers: frozenset[str]):
        self._pool = pool
        self._decline_above = decline_above
        self._declined = declined_customers

    def _decide(self, customer_id: str, amount: Decimal) -> str | None:
        if amount > self._decline_above:
            return "amount exceeds the sandbox limit"
        if customer_id in self._declined:
            return "card declined"
        return None

    async def _once(self, key: str, kind: str, reference: str, customer_id: str,
                    amount: Decimal, decline_reason: str | None) -> asyncpg.Record:
        """The first answer given under this key: one round trip, or two when a call with the
        same key committed while this one waited on it (its row is then read afresh)."""
        row = await self._pool.fetchrow(
            "WITH first AS (INSERT INTO payments.sandbox_ledger (idempotency_key, kind, reference,"
            "  customer_id, amount, approved, decline_reason)"
            "  VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (idempotency_key) DO NOTHING"
            "  RETURNING reference, approved, decline_reason)"
            " SELECT * FROM first UNION ALL SELECT reference, approved, decline_reason"
            " FROM payments.sandbox_ledger WHERE idempotency_key = $1",
            key, kind, reference, customer_id, amount, decline_reason is None, decline_reason)
        return row or await self._pool.fetchrow(
            "SELECT reference, approved, decline_reason FROM payments.sandbox_ledger"
            " WHERE idempotency_key = $1", key)

    async def charge(self, idempotency_key: str, customer_id: str,
                     amount: Decimal) -> ChargeResult:
        row = await self._once(idempotency_key, "charge", new_id(), customer_id, amount,
                               self._decide(customer_id, amount))
        return ChargeResult(row["reference"], row["approved"], row["decline_reason"])

    async def refund(self, idempotency_key: str, payment_id: str, customer_id: str,
                     amount: Decimal) -> str:
        row = await self._once(idempotency_key, "refund", new_id(), customer_id, amount, None)
        return row["reference"]
