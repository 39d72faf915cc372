"""Events applied in batches keep every promise of events applied one by one: a poison event is
dead-lettered alone, a duplicate inside a batch or across batches is applied once, two events of
one order in a batch apply in stream order, and a consumer killed between its batch's commit and
its acks changes nothing twice. Events are published while no consumer runs, so they meet in one
batch when it starts."""

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from batch_probe import DURABLE, SCHEMA, SUBJECT, TABLES, Ping, batches, handed, probe, released
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from support import cli_env, eventually, world_of_its_own

from contracts.base import new_id
from contracts.events import (
    ORDER_CANCELLED,
    ORDER_SHIPPED,
    STREAM,
    Event,
    InventoryReserved,
    OrderCancelled,
    OrderCreated,
    OrderItem,
    OrderValidated,
    PaymentProcessed,
    StockItem,
)
from handlers import HANDLER_SETS
from runtime.app import build_app
from runtime.streams import ensure_stream
from runtime.tools.bench.world import World
from storage import deadletters
from storage import orders as order_store


@pytest.fixture(scope="module")
async def world(settings) -> AsyncIterator[World]:
    """A NATS server and database of its own, with no handler set running until a test starts
    one; long lingers, so what is published beforehand is taken as one batch."""
    async with world_of_its_own(settings, "batches", event_batch_linger_seconds=0.3,
                                event_ack_wait_seconds=1.0) as world:
        await world.db.execute(TABLES)
        await ensure_stream(js(world), world.settings)
        HANDLER_SETS[probe.name] = probe
        try:
            yield world
        finally:
            del HANDLER_SETS[probe.name]


def js(world: World) -> JetStreamContext:
    """The stream by hand, as the operator."""
    return world.operator.nc.jetstream()


async def publish(world: World, event: Ping | Event, *, msg_id: str | None = None) -> None:
    """With the event id as Nats-Msg-Id, or with `msg_id=""` none at all: JetStream then keeps
    every copy, as after its duplicate window."""
    msg_id = event.event_id if msg_id is None else msg_id
    await js(world).publish(SUBJECT if isinstance(event, Ping) else event.subject,
                           event.model_dump_json().encode(), stream=STREAM,
                           headers={"Nats-Msg-Id": msg_id} if msg_id else None)


def ping(n: int, **kw) -> Ping:
    return Ping(event_id=new_id(), n=n, **kw)


async def applied(world: World, numbers: range) -> dict[int, int]:
    """How many times each ping was applied."""
    rows = await world.db.fetch(f"SELECT n, count(*) AS times FROM {SCHEMA}.applied"
                                " WHERE n = ANY($1::int[]) GROUP BY n", list(numbers))
    return {r["n"]: r["times"] for r in rows}


async def test_a_poison_event_is_dead_lettered_alone_and_the_rest_of_its_batch_applied_once(
        world: World):
    pings = [ping(n, poison=(n == 103)) for n in range(101, 106)]
    for p in pings:
        await publish(world, p)
    batches.clear()

    async with build_app(world.settings, [probe.name]):
        letter = await eventually(lambda: _dead_letter(world, pings[2].event_id))
        counts = await eventually(lambda: _when(applied(world, range(101, 106)), size=4))

    assert batches[0] == [101, 102, 103, 104, 105]  # they came as one batch
    assert counts == {101: 1, 102: 1, 104: 1, 105: 1}
    assert letter.deliveries == 3 and letter.error == "RuntimeError: ping 103 is poison"


async def test_an_event_delivered_twice_in_a_batch_or_again_later_is_applied_once(
        world: World):
    first = ping(201)
    await publish(world, first)
    async with build_app(world.settings, [probe.name]):
        await eventually(lambda: applied(world, range(201, 202)))
    twice = ping(202)
    await publish(world, twice, msg_id="")
    await publish(world, twice, msg_id="")  # a second copy of the same event
    await publish(world, first, msg_id=new_id())  # applied already, delivered again
    await publish(world, ping(203))
    batches.clear()

    async with build_app(world.settings, [probe.name]):
        counts = await eventually(lambda: _when(applied(world, range(201, 204)), size=3))

    assert batches[0] == [202, 201, 203]  # one batch; the copy of 202 dropped before the handler
    assert counts == {201: 1, 202: 1, 203: 1}


async def test_an_event_that_presumes_a_later_one_in_its_batch_waits_for_it(world: World):
    pings = [ping(302, after=301), ping(301), ping(303, after=301)]
    for p in pings:
        await publish(world, p)
    batches.clear()

    async with build_app(world.settings, [probe.name]):
        counts = await eventually(lambda: _when(applied(world, range(301, 304)), size=3))
        attempts = await world.db.fetch(f"SELECT n, attempt FROM {SCHEMA}.applied"
                                        " WHERE n BETWEEN 301 AND 303")

    assert batches[0] == [302, 301, 303]
    assert counts == {301: 1, 302: 1, 303: 1}
    # 303 came after 301 in the batch and was applied with it; 302 came before, and waited.
    assert {r["n"]: r["attempt"] for r in attempts} == {301: 1, 302: 2, 303: 1}


async def test_two_events_of_one_order_in_one_batch_are_applied_in_stream_order(world: World):
    in_order, reversed_ = await _order(world), await _order(world)
    for event in _paid_and_reserved(in_order):
        await publish(world, event)
    for event in reversed(_paid_and_reserved(reversed_)):
        await publish(world, event)

    async with build_app(world.settings, ["orders"]) as app:
        for order_id in (in_order, reversed_):
            await eventually(lambda o=order_id: _status_is(world, o, "RESERVED"), seconds=20)
        lifecycle = next(c for c in app.context.get("resources").consumers
                         if c.durable == "orders-lifecycle")

    for order_id in (in_order, reversed_):
        history = await world.db.fetch("SELECT status FROM orders.history WHERE order_id = $1"
                                       " ORDER BY id", order_id)
        assert [h["status"] for h in history] == ["CREATED", "VALIDATED", "PAID", "RESERVED"]
    # The first batch held all six; the reversed order's early two came back after it.
    assert lifecycle.events >= 6 and lifecycle.batches < lifecycle.events


async def test_a_consumer_killed_between_commit_and_acks_applies_its_batch_once(world: World):
    pings = [ping(401), ping(402, crash=True), ping(403)]
    for p in pings:
        await publish(world, p)

    process = await asyncio.create_subprocess_exec(
        sys.executable, "batch_probe.py", cwd=Path(__file__).parent,
        env=cli_env(world.settings))
    assert await asyncio.wait_for(process.wait(), 60) == -signal.SIGKILL
    committed = await applied(world, range(401, 404))
    killed = await js(world).consumer_info(STREAM, DURABLE)
    async with build_app(world.settings, [probe.name]):
        info = await eventually(lambda: _all_acked(world))

    assert committed == {401: 1, 402: 1, 403: 1}  # the batch had committed...
    assert killed.num_ack_pending == 3  # ...and none of it was acked
    assert info.delivered.consumer_seq == killed.delivered.consumer_seq + 3  # all came back
    assert await applied(world, range(401, 404)) == {401: 1, 402: 1, 403: 1}


async def test_events_that_waited_through_the_last_batch_are_not_held_for_a_linger_again(
        settings, monkeypatch):
    """The linger runs from a batch's oldest event: one that came while the last batch was
    applied has waited its part already, and is handed over as soon as that batch is done."""
    linger = 2.0
    async with world_of_its_own(settings, "linger", event_batch_linger_seconds=linger,
                                event_ack_wait_seconds=30.0) as world:
        monkeypatch.setitem(HANDLER_SETS, probe.name, probe)
        await world.db.execute(TABLES)
        await ensure_stream(js(world), world.settings)
        for n in range(501, 521):  # a busy consumer: it lingers for company
            await publish(world, ping(n, hold=(n == 501)))
        batches.clear()
        handed.clear()
        released.clear()

        async with build_app(world.settings, [probe.name]):
            await eventually(lambda: _handed(1))  # held while the next ping comes
            await publish(world, ping(521))
            await eventually(lambda: _delivered(world, 21))
            await asyncio.sleep(linger)  # the part of a linger ping 521 waits while held
            released.set()
            release = asyncio.get_running_loop().time()
            await eventually(lambda: _handed(2))
            counts = await eventually(lambda: _when(applied(world, range(501, 522)), size=21))

    assert batches == [list(range(501, 521)), [521]]
    assert counts == {n: 1 for n in range(501, 522)}
    # Lingered again after the release, ping 521 would have been handed over `linger` later.
    assert handed[1] - release < linger / 2


async def _handed(n: int) -> bool:
    return len(handed) >= n


async def _delivered(world: World, n: int) -> bool:
    """The consumer holds n events (handed out to it, none acked)."""
    return (await js(world).consumer_info(STREAM, DURABLE)).num_ack_pending == n


async def _all_acked(world: World):
    info = await js(world).consumer_info(STREAM, DURABLE)
    return info if info.num_pending == 0 and info.num_ack_pending == 0 else None


async def _when(counts_coro, *, size: int) -> dict[int, int] | None:
    counts = await counts_coro
    return counts if len(counts) == size else None


async def _dead_letter(world: World, event_id: str) -> deadletters.DeadLetter | None:
    return next((d for d in await deadletters.recent(world.db, DURABLE)
                 if d.event_id == event_id), None)


async def _order(world: World) -> str:
    """An order as orders.create writes it, its OrderCreated never published."""
    order_id = new_id()
    items = [OrderItem(product_id="p", quantity=1, price=Decimal("3.00"))]
    created = OrderCreated(order_id=order_id, customer_id=new_id(), items=items,
                           total_price=Decimal("3.00"))
    async with world.db.acquire() as db:
        await order_store.place(db, order_id, created.customer_id, items, Decimal("3.00"),
                                created)
        await db.execute("DELETE FROM orders.outbox WHERE event_id = $1", created.event_id)
    return order_id


def _paid_and_reserved(order_id: str) -> list[Event]:
    return [OrderValidated(order_id=order_id, is_valid=True),
            PaymentProcessed(order_id=order_id, payment_id=new_id(), payment_status="SUCCESS",
                             amount=Decimal("3.00")),
            InventoryReserved(order_id=order_id, items=[StockItem(product_id="p", quantity=1)])]


async def _status_is(world: World, order_id: str, status: str) -> bool:
    return await world.db.fetchval("SELECT status FROM orders.orders WHERE id = $1",
                                   order_id) == status


# --- consumers of an older Atlantic -----------------------------------------------------------

async def test_a_consumer_an_older_atlantic_declared_is_updated_in_place(world: World):
    """FastStream declared payments-orders on every order event, with a backoff that made its
    ack wait 50 ms; it keeps its place and gets exactly its subjects and the ack wait."""
    await js(world).add_consumer(STREAM, ConsumerConfig(
        durable_name="payments-orders", filter_subject="atlantic.events.order.>",
        ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, max_deliver=6,
        backoff=[0.05, 0.25, 1.0, 3.0, 10.0]))

    async with build_app(world.settings, ["payments"]):
        info = await js(world).consumer_info(STREAM, "payments-orders")

    assert sorted(info.config.filter_subjects) == sorted(
        s for c in HANDLER_SETS["payments"].consumers for s in c.subjects)
    assert not info.config.backoff and info.config.ack_wait == 1.0


async def test_the_catalog_consumers_of_an_older_atlantic_hand_over_to_one(world: World):
    """One consumer per event became catalog-stock: it starts where the slowest stopped, with
    their inbox marks, and they are removed."""
    formers = {"catalog-release-cancelled": ORDER_CANCELLED, "catalog-ship-stock": ORDER_SHIPPED}
    for durable, subject in formers.items():
        await js(world).add_consumer(STREAM, ConsumerConfig(
            durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW))
    cancels = [OrderCancelled(order_id=new_id(), cancellation_reason="old") for _ in range(3)]
    for event in cancels:
        await publish(world, event)
    old = await js(world).pull_subscribe_bind("catalog-release-cancelled", stream=STREAM)
    handled = await old.fetch(2, timeout=5)  # the old consumer applied the first two...
    await world.db.executemany(
        "INSERT INTO catalog.inbox (consumer, event_id) VALUES ('catalog-release-cancelled', $1)",
        [(e.event_id,) for e in cancels[:2]])  # ...marked them (their effect left out here)...
    await handled[1].ack_sync()  # ...and acked the second before it stopped: both come back
    await old.unsubscribe()

    async with build_app(world.settings, ["catalog"]):
        await eventually(lambda: _hold_state(world, cancels[2].order_id))
        names = [c.name for c in await js(world).consumers_info(STREAM)]

    assert [await _hold_state(world, e.order_id) for e in cancels] == [None, None, "cancelled"]
    assert "catalog-stock" in names and not set(formers) & set(names)


async def _hold_state(world: World, order_id: str) -> str | None:
    return await world.db.fetchval("SELECT state FROM catalog.holds WHERE order_id = $1",
                                   order_id)
