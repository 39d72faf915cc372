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
from storage import payments as store


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

    async def charge(self, idempotency_key: str, customer_id: str,
                     amount: Decimal) -> ChargeResult:
        row = await store.sandbox_answer(self._pool, idempotency_key, "charge", new_id(),
                                         customer_id, amount, self._decide(customer_id, amount))
        return ChargeResult(row["reference"], row["approved"], row["decline_reason"])

    async def refund(self, idempotency_key: str, payment_id: str, customer_id: str,
                     amount: Decimal) -> str:
        row = await store.sandbox_answer(self._pool, idempotency_key, "refund", new_id(),
                                         customer_id, amount, None)
        return row["reference"]
