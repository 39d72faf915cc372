"""The saga under faults, each set in its own process: consumers killed mid-flight, the NATS
server killed and restarted under load, and a poison event. Nothing is lost, nothing happens
twice: every order ends where it should, charged once."""

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
from support import eventually, world_of_its_own

from contracts.base import new_id
from contracts.events import STREAM
from handlers import HANDLER_SETS
from runtime import accounts
from runtime.tools.bench.world import SAGA_SETS, World
from runtime.tools.client import AtlanticClient, until_answered

ORDERS_UNDER_RESTART = 1_000


@pytest.fixture(scope="module")
async def world(settings) -> AsyncIterator[World]:
    async with world_of_its_own(settings, "faults", sets=SAGA_SETS, nats_users=True) as world:
        yield world


async def place(customer: AtlanticClient, product_id: str, deadline: float = 120) -> str:
    """Places one order the way a careful client does: one Idempotency-Key, retried with backoff
    until an answer comes back, so an outage can neither lose the order nor place it twice."""
    key = {"Idempotency-Key": new_id()}
    reply = await until_answered(lambda: customer.call_or_none("atlantic.orders.create", {
        "items": [{"productId": product_id, "quantity": 1}]}, headers=key, timeout=5),
        give_up_after=deadline)
    assert reply is not None, "the order was never placed"
    assert reply.ok, reply.body
    return reply.body["orderId"]


async def place_many(customer: AtlanticClient, products: list[str], count: int,
                     shoppers: int = 50) -> list[str]:
    """`count` orders from `shoppers` clients at a time, as a storefront would send them."""
    gate = asyncio.Semaphore(shoppers)

    async def one(n: int) -> str:
        async with gate:
            return await place(customer, products[n % len(products)])

    return await asyncio.gather(*(one(n) for n in range(count)))


async def statuses(world: World, order_ids: list[str]) -> dict[str, str]:
    rows = await world.db.fetch("SELECT id, status FROM orders.orders WHERE id = ANY($1)",
                                order_ids)
    return {r["id"]: r["status"] for r in rows}


async def all_reserved(world: World, order_ids: list[str]) -> bool:
    found = await statuses(world, order_ids)
    return len(found) == len(order_ids) and set(found.values()) == {"RESERVED"}


async def charges_per_order(world: World, order_ids: list[str]) -> dict[str, int]:
    rows = await world.db.fetch(
        "SELECT substr(idempotency_key, 8) AS order_id, count(*) AS n"
        " FROM payments.sandbox_ledger WHERE kind = 'charge'"
        " AND substr(idempotency_key, 8) = ANY($1) GROUP BY 1", order_ids)
    return {r["order_id"]: r["n"] for r in rows}


async def in_flight(world: World, name: str) -> int:
    """Events the set's consumers were handed and have not acked."""
    js = world.operator.nc.jetstream()
    return sum([(await js.consumer_info(STREAM, c.durable)).num_ack_pending
                for c in HANDLER_SETS[name].consumers])


async def kill_mid_flight(world: World, name: str) -> int:
    """SIGKILL to the set's process while its consumers hold events they have not acked: the
    process is frozen (SIGSTOP) to look, and killed only when something is in flight. Returns
    how many events the dead process left unacked."""
    process = world.processes[name]

    async def frozen_holding_events() -> bool:
        process.send_signal(signal.SIGSTOP)
        if await in_flight(world, name):
            return True
        process.send_signal(signal.SIGCONT)
        return False

    await eventually(frozen_holding_events, seconds=60, interval=0.01)
    await world.stop(name, signal.SIGKILL)
    return await in_flight(world, name)


async def test_consumers_killed_mid_flight_change_nothing_twice(world: World):
    """SIGKILL lands while events are in flight: the redelivered events find their inbox marks
    (or are applied for the first time), so no second charge, hold or status change."""
    customer, _ = await world.customer()
    product = await world.product("15.00", 1_000)
    order_ids: list[str] = []

    async def kill_while_shopping(name: str) -> int:
        """Orders in small rounds until the kill has landed, so each set has work in flight."""
        killed = asyncio.Event()

        async def shop() -> None:
            while not killed.is_set():
                order_ids.extend(await place_many(customer, [product], 10, shoppers=10))

        shopping = asyncio.create_task(shop())
        try:
            return await kill_mid_flight(world, name)
        finally:
            killed.set()
            await world.serve([name])
            await shopping

    left_unacked = {name: await kill_while_shopping(name)
                    for name in ("payments", "catalog", "orders")}

    assert all(left_unacked.values()), f"a kill found nothing in flight: {left_unacked}"
    await eventually(lambda: all_reserved(world, order_ids), seconds=90)
    assert await charges_per_order(world, order_ids) == dict.fromkeys(order_ids, 1)
    stock = await world.stock(product)
    assert (stock["reserved"], stock["held"], stock["onHand"]) == (len(order_ids), 0, 1_000)
    history = await world.db.fetch(
        "SELECT order_id, count(*) AS n FROM orders.history WHERE order_id = ANY($1)"
        " GROUP BY 1", order_ids)
    assert {r["n"] for r in history} == {4}  # CREATED, VALIDATED, PAID, RESERVED: once each


async def test_a_nats_restart_under_load_loses_no_order(world: World):
    nc = await accounts.connect(world.client_url, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.2)
    customer_client = AtlanticClient(nc)
    signed_in, _ = await world.customer()
    customer = customer_client.signed_in(signed_in.token)
    products = [await world.product("3.00", 1_000) for _ in range(2)]
    try:
        placing = asyncio.create_task(place_many(customer, products, ORDERS_UNDER_RESTART))
        await asyncio.sleep(1.0)
        world.nats.restart(kill=True)
        order_ids = await placing

        await eventually(lambda: all_reserved(world, order_ids), seconds=240, interval=0.5)
    finally:
        await nc.close()

    assert len(set(order_ids)) == ORDERS_UNDER_RESTART
    assert await charges_per_order(world, order_ids) == dict.fromkeys(order_ids, 1)
    reserved = [(await world.stock(p))["reserved"] for p in products]
    assert sum(reserved) == ORDERS_UNDER_RESTART


async def test_a_poison_event_is_dead_lettered_and_orders_keep_flowing(world: World):
    js = world.operator.nc.jetstream()
    poison = new_id()
    await js.publish("atlantic.events.order.validated", b'{"event": "OrderValidated"}',
                     headers={"Nats-Msg-Id": poison})
    customer, _ = await world.customer()
    product = await world.product()

    order_id = await place(customer, product)

    await world.status_becomes(customer, order_id, "RESERVED")

    async def dead_lettered():
        rows = await world.db.fetch("SELECT consumer, error FROM ops.dead_letters"
                                    " WHERE event_id = $1", poison)
        return {r["consumer"]: r["error"] for r in rows}

    letters = await eventually(dead_lettered)
    assert {"orders-lifecycle", "payments-orders"} <= set(letters)
    assert all("orderId" in error for error in letters.values())
