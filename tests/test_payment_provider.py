"""The sandbox provider answers as a real one does under idempotency keys; calls made together
(a batch's charges, started at once) share one write to its ledger, and each gets its own
answer, or the error that write met."""

import asyncio
from decimal import Decimal

import asyncpg
import pytest

from contracts.base import new_id
from handlers.payments.provider import SandboxProvider

DECLINED = "declined-customer"


@pytest.fixture
async def pool(system, settings):  # the system: the payments schema is migrated
    pool = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=4)
    yield pool
    await pool.close()


def sandbox(pool: asyncpg.Pool) -> SandboxProvider:
    return SandboxProvider(pool, Decimal("100.00"), frozenset({DECLINED}))


async def test_calls_made_together_share_one_write_and_each_gets_its_own_answer(pool):
    provider, run = sandbox(pool), new_id()
    earlier = await provider.charge(f"{run}-earlier", "c1", Decimal("5.00"))

    a, big, declined, again, a_twice, refund = await asyncio.gather(
        provider.charge(f"{run}-a", "c1", Decimal("5.00")),
        provider.charge(f"{run}-big", "c1", Decimal("500.00")),
        provider.charge(f"{run}-declined", DECLINED, Decimal("5.00")),
        provider.charge(f"{run}-earlier", "c1", Decimal("5.00")),  # again: the first answer
        provider.charge(f"{run}-a", "c1", Decimal("5.00")),  # twice in one write: one charge
        provider.refund(f"{run}-refund", earlier.payment_id, "c1", Decimal("5.00")))
    rows = await pool.fetch("SELECT idempotency_key, xmin::text AS tx FROM payments.sandbox_ledger"
                            " WHERE idempotency_key LIKE $1", f"{run}-%")

    assert a.approved and a_twice == a
    assert not big.approved and big.decline_reason == "amount exceeds the sandbox limit"
    assert not declined.approved and declined.decline_reason == "card declined"
    assert again == earlier
    assert refund not in {a.payment_id, earlier.payment_id}
    tx = {r["idempotency_key"].removeprefix(f"{run}-"): r["tx"] for r in rows}
    assert sorted(tx) == ["a", "big", "declined", "earlier", "refund"]  # one row per key
    assert len({tx[k] for k in ("a", "big", "declined", "refund")}) == 1  # one transaction
    assert tx["earlier"] != tx["a"]


async def test_every_call_of_a_write_that_failed_gets_its_error(settings, system):
    closed = await asyncpg.create_pool(settings.postgres_dsn, min_size=1, max_size=1)
    await closed.close()
    provider = sandbox(closed)

    answers = await asyncio.gather(provider.charge(new_id(), "c1", Decimal("5.00")),
                                   provider.charge(new_id(), "c2", Decimal("6.00")),
                                   return_exceptions=True)

    assert [type(a) for a in answers] == [asyncpg.InterfaceError] * 2
