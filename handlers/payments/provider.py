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

import asyncio
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
    provider would: what it did stays done even when the caller rolls back.

    Calls made together (a batch's charges, one per order, started at once) share one round
    trip to the ledger: each call waits for the statement that writes every call waiting
    when it runs."""

    def __init__(self, pool: asyncpg.Pool, decline_above: Decimal,
                 declined_customers: frozenset[str]):
        self._pool = pool
        self._decline_above = decline_above
        self._declined = declined_customers
        self._waiting: list[tuple[store.LedgerEntry, asyncio.Future[asyncpg.Record]]] = []
        self._writes: set[asyncio.Task[None]] = set()  # held, or the loop may drop one

    def _decide(self, customer_id: str, amount: Decimal) -> str | None:
        if amount > self._decline_above:
            return "amount exceeds the sandbox limit"
        if customer_id in self._declined:
            return "card declined"
        return None

    async def charge(self, idempotency_key: str, customer_id: str,
                     amount: Decimal) -> ChargeResult:
        row = await self._answer(store.LedgerEntry(idempotency_key, "charge", new_id(),
                                                   customer_id, amount,
                                                   self._decide(customer_id, amount)))
        return ChargeResult(row["reference"], row["approved"], row["decline_reason"])

    async def refund(self, idempotency_key: str, payment_id: str, customer_id: str,
                     amount: Decimal) -> str:
        row = await self._answer(store.LedgerEntry(idempotency_key, "refund", new_id(),
                                                   customer_id, amount, None))
        return row["reference"]

    async def _answer(self, entry: store.LedgerEntry) -> asyncpg.Record:
        answer: asyncio.Future[asyncpg.Record] = asyncio.get_running_loop().create_future()
        self._waiting.append((entry, answer))
        if len(self._waiting) == 1:  # the first to wait sends; the others started meanwhile join
            write = asyncio.get_running_loop().create_task(self._write())
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)
        return await answer

    async def _write(self) -> None:
        calls, self._waiting = self._waiting, []
        try:
            rows = await store.sandbox_answers(self._pool, [entry for entry, _ in calls])
        except asyncio.CancelledError:
            for _, answer in calls:
                answer.cancel()
            raise
        except Exception as exc:  # each call fails with it, as it would alone
            for _, answer in calls:
                if not answer.done():
                    answer.set_exception(exc)
            return
        for entry, answer in calls:
            if not answer.done():  # a caller that gave up (cancelled) wants no answer
                answer.set_result(rows[entry.key])
