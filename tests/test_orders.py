"""The orders set's requests as a client sees them, and its state machine under duplicate,
early and illegal events."""

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from nats.js.api import PubAck
from support import eventually, world_of_its_own

from contracts.base import new_id
from contracts.events import STREAM, Event, InventoryReserved, PaymentProcessed, StockItem
from handlers.orders.saga import LIFECYCLE_CONSUMER
from runtime.tools.bench.world import SAGA_SETS, World
from storage import orders as store


@pytest.fixture(scope="module")
async def world(settings) -> AsyncIterator[World]:
    async with world_of_its_own(settings, "orders", sets=SAGA_SETS, in_process=True,
                                nats_users=True) as world:
        yield world


async def publish(world: World, event: Event) -> PubAck:
    return await world.operator.nc.jetstream().publish(
        event.subject, event.model_dump_json().encode(), stream=STREAM,
        headers={"Nats-Msg-Id": event.event_id})


# --- orders.create ----------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "fields"), [
    ({}, {"items"}),
    ({"items": []}, {"items"}),
    ({"items": [{"productId": "p", "quantity": 0}]}, {"items.0.quantity"}),
    ({"items": [{"productId": "p", "quantity": "two"}]}, {"items.0.quantity"}),
    ({"items": [{"productId": "p", "quantity": "2"}]}, {"items.0.quantity"}),
    ({"items": [{"productId": "p", "quantity": True}]}, {"items.0.quantity"}),
    ({"items": [{"product_id": "p", "quantity": 1}]}, {"items.0.productId", "items.0.product_id"}),
    ({"items": [{"productId": "p"}]}, {"items.0.quantity"}),
    ({"items": [{"productId": "p", "quantity": 1, "price": 0.01}]}, {"items.0.price"}),
    ({"items": [{"productId": "p", "quantity": 1}] * 2}, {"items"}),
    ({"items": [{"productId": "p", "quantity": 1}], "totalPrice": 1}, {"totalPrice"}),
    ({"items": [{"productId": f"p{n}", "quantity": 1} for n in range(101)]}, {"items"}),
])
async def test_bad_orders_name_their_fields(world: World, body, fields):
    customer, _ = await world.customer()

    reply = await customer.call("atlantic.orders.create", body)

    assert reply.status == 422, reply.body
    assert reply.error_fields == fields


async def test_an_order_needs_a_signed_in_customer(world: World):
    reply = await world.client.call("atlantic.orders.create",
                                    {"items": [{"productId": "p", "quantity": 1}]})

    assert reply.status == 401


async def test_unknown_products_and_short_stock_are_refused_per_line(world: World):
    customer, _ = await world.customer()
    scarce = await world.product("5.00", 1)

    reply = await customer.call("atlantic.orders.create", {"items": [
        {"productId": scarce, "quantity": 2}, {"productId": "no-such-product", "quantity": 1}]})

    assert reply.status == 422
    assert reply.error_code == "items_unavailable"
    assert reply.error_fields == {"items.0.quantity", "items.1.productId"}


async def test_the_price_comes_from_the_catalog(world: World):
    customer, _ = await world.customer()
    lamp = await world.product("19.99", 5)

    order = await world.order(customer, (lamp, 3))

    assert order["items"] == [{"productId": lamp, "quantity": 3, "price": 19.99}]
    assert order["totalPrice"] == 59.97


async def test_a_retried_create_with_the_same_idempotency_key_returns_the_same_order(
        world: World):
    customer, _ = await world.customer()
    lamp = await world.product("10.00", 50)
    key = {"Idempotency-Key": new_id()}

    replies = await asyncio.gather(*(customer.call(
        "atlantic.orders.create", {"items": [{"productId": lamp, "quantity": 1}]}, headers=key)
        for _ in range(8)))
    page = await customer.call("atlantic.orders.list", {})

    assert all(r.ok for r in replies), [r.body for r in replies]
    assert len({r.body["orderId"] for r in replies}) == 1
    assert [o["orderId"] for o in page.body["orders"]] == [replies[0].body["orderId"]]


async def test_a_retry_after_the_last_unit_went_to_its_own_order_returns_that_order(
        world: World):
    customer, _ = await world.customer()
    lamp = await world.product("10.00", 1)
    key = {"Idempotency-Key": new_id()}
    first = await world.order(customer, (lamp, 1), headers=key)
    await world.status_becomes(customer, first["orderId"], "RESERVED")

    retry = await customer.call("atlantic.orders.create",
                                {"items": [{"productId": lamp, "quantity": 1}]}, headers=key)
    other = await customer.call("atlantic.orders.create",
                                {"items": [{"productId": lamp, "quantity": 1}]})

    assert retry.ok, retry.body
    assert retry.body["orderId"] == first["orderId"]
    assert other.error_code == "items_unavailable"


async def test_an_idempotency_key_reused_for_another_order_is_a_conflict(world: World):
    customer, _ = await world.customer()
    lamp = await world.product("10.00", 50)
    key = {"Idempotency-Key": new_id()}
    await world.order(customer, (lamp, 1), headers=key)

    reply = await customer.call("atlantic.orders.create",
                                {"items": [{"productId": lamp, "quantity": 2}]}, headers=key)

    assert reply.status == 409
    assert reply.error_code == "idempotency_key_reused"


# --- orders.get, orders.list ------------------------------------------------------------------

async def test_a_customer_sees_only_their_own_orders(world: World):
    alice, _ = await world.customer()
    bob, _ = await world.customer()
    lamp = await world.product()
    order = await world.order(alice, (lamp, 1))

    as_bob = await bob.call("atlantic.orders.get", {"orderId": order["orderId"]})
    as_admin = await world.admin.call("atlantic.orders.get", {"orderId": order["orderId"]})
    bob_cancels = await bob.call("atlantic.orders.cancel", {"orderId": order["orderId"]})

    assert as_bob.status == 404
    assert as_admin.ok and as_admin.body["orderId"] == order["orderId"]
    assert bob_cancels.status == 404


async def test_listing_pages_through_every_order_once_newest_first(world: World):
    customer, _ = await world.customer()
    lamp = await world.product("1.00", 100)
    placed = [(await world.order(customer, (lamp, 1)))["orderId"] for _ in range(7)]

    seen, cursor = [], None
    while True:
        reply = await customer.call("atlantic.orders.list",
                                    {"limit": 3} | ({"cursor": cursor} if cursor else {}))
        assert reply.ok, reply.body
        seen += [o["orderId"] for o in reply.body["orders"]]
        if not (cursor := reply.body["nextCursor"]):
            break

    assert seen == placed[::-1]


async def test_listing_filters_by_status_for_admins_across_customers(world: World):
    alice, _ = await world.customer()
    bob, _ = await world.customer()
    piano = await world.product("9000.00", 5)  # declined by the sandbox: ends CANCELLED
    orders = [await world.order(alice, (piano, 1)), await world.order(bob, (piano, 1))]
    for order in orders:
        await world.status_becomes(world.admin, order["orderId"], "CANCELLED")

    reply = await world.admin.call("atlantic.orders.list", {"status": "CANCELLED", "limit": 100})

    listed = {o["orderId"] for o in reply.body["orders"]}
    assert {o["orderId"] for o in orders} <= listed
    assert all(o["status"] == "CANCELLED" for o in reply.body["orders"])


@pytest.mark.parametrize(("body", "fields"), [
    ({"limit": 0}, {"limit"}),
    ({"limit": 1000}, {"limit"}),
    ({"status": "LOST"}, {"status"}),
    ({"cursor": "not-a-cursor"}, {"cursor"}),
    ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, {"body"}),
])
async def test_bad_list_requests_name_their_fields(world: World, body, fields):
    customer, _ = await world.customer()

    reply = await customer.call("atlantic.orders.list", body)

    assert reply.status == 422, reply.body
    assert reply.error_fields == fields


# --- cancel, ship, deliver, return ------------------------------------------------------------

async def test_only_admins_ship_and_deliver(world: World):
    customer, _ = await world.customer()
    lamp = await world.product()
    order = await world.order(customer, (lamp, 1))

    ship = await customer.call("atlantic.orders.ship",
                               {"orderId": order["orderId"], "carrier": "DHL"})
    deliver = await customer.call("atlantic.orders.deliver", {"orderId": order["orderId"]})

    assert (ship.status, deliver.status) == (403, 403)


async def test_steps_out_of_turn_are_conflicts(world: World):
    customer, _ = await world.customer()
    lamp = await world.product()
    order_id = (await world.order(customer, (lamp, 1)))["orderId"]
    await world.status_becomes(customer, order_id, "RESERVED")

    deliver_early = await world.admin.call("atlantic.orders.deliver", {"orderId": order_id})
    return_early = await customer.call("atlantic.orders.return",
                                       {"orderId": order_id, "reason": "meh"})
    await world.admin.call("atlantic.orders.ship", {"orderId": order_id, "carrier": "DHL"})
    cancel_late = await customer.call("atlantic.orders.cancel", {"orderId": order_id})
    ship_twice = await world.admin.call("atlantic.orders.ship",
                                        {"orderId": order_id, "carrier": "DHL"})

    for reply in (deliver_early, return_early, cancel_late, ship_twice):
        assert reply.status == 409, reply.body
        assert reply.error_code == "invalid_status"


async def test_a_return_after_the_window_is_refused(world: World):
    customer, _ = await world.customer()
    lamp = await world.product()
    order_id = (await world.order(customer, (lamp, 1)))["orderId"]
    await world.status_becomes(customer, order_id, "RESERVED")
    await world.admin.call("atlantic.orders.ship", {"orderId": order_id, "carrier": "DHL"})
    await world.admin.call("atlantic.orders.deliver", {"orderId": order_id})
    await world.db.execute("UPDATE orders.orders SET delivered_at = now() - interval '31 days'"
                           " WHERE id = $1", order_id)

    reply = await customer.call("atlantic.orders.return", {"orderId": order_id, "reason": "late"})

    assert reply.status == 409
    assert reply.error_code == "return_window_closed"


# --- the state machine under redelivery -------------------------------------------------------

async def test_a_duplicate_or_late_event_changes_nothing_and_is_recorded(world: World):
    customer, _ = await world.customer()
    lamp = await world.product("12.00", 5)
    order_id = (await world.order(customer, (lamp, 1)))["orderId"]
    before = await world.status_becomes(customer, order_id, "RESERVED")

    # A second payment success (a new event id: not a redelivery) arrives after the reservation.
    late = PaymentProcessed(order_id=order_id, payment_id=new_id(), payment_status="SUCCESS",
                            amount=Decimal("12.00"))
    await publish(world, late)
    await eventually(lambda: _ignored(world, order_id, late.event_id))
    after = (await customer.call("atlantic.orders.get", {"orderId": order_id})).body

    assert after["status"] == "RESERVED"
    assert after["history"] == before["history"]
    assert after["paidAmount"] == 12.0


async def test_an_event_for_a_final_order_is_recorded_and_acked(world: World):
    customer, _ = await world.customer()
    piano = await world.product("7000.00", 1)
    order_id = (await world.order(customer, (piano, 1)))["orderId"]
    await world.status_becomes(customer, order_id, "CANCELLED")

    stray = InventoryReserved(order_id=order_id,
                              items=[StockItem(product_id=piano, quantity=1)])
    await publish(world, stray)
    [ignored] = await eventually(lambda: _ignored(world, order_id, stray.event_id))

    assert ignored["status_then"] == "CANCELLED"
    assert (await customer.call("atlantic.orders.get", {"orderId": order_id})).body[
        "status"] == "CANCELLED"


async def test_an_early_event_waits_for_the_step_before_it(world: World):
    """InventoryReserved before PAID is retried until the payment lands, then applied."""
    _, customer_id = await world.customer()
    order_id = new_id()
    async with world.db.acquire() as db:
        from contracts.events import OrderCreated, OrderItem
        items = [OrderItem(product_id="p", quantity=1, price=Decimal("3.00"))]
        created = OrderCreated(order_id=order_id, customer_id=customer_id, items=items,
                               total_price=Decimal("3.00"))
        await store.place(db, order_id, customer_id, items, Decimal("3.00"), created)
        await db.execute("DELETE FROM orders.outbox WHERE event_id = $1", created.event_id)
        await store.set_status(db, order_id, "VALIDATED")

    early = await publish(world, InventoryReserved(order_id=order_id,
                                                   items=[StockItem(product_id="p", quantity=1)]))
    await eventually(lambda: _came_back(world, LIFECYCLE_CONSUMER, early.seq))
    assert await _status(world, order_id) == "VALIDATED"
    await publish(world, PaymentProcessed(order_id=order_id, payment_id=new_id(),
                                          payment_status="SUCCESS", amount=Decimal("3.00")))

    await eventually(lambda: _status_is(world, order_id, "RESERVED"), seconds=20)
    history = await world.db.fetch("SELECT status FROM orders.history WHERE order_id = $1"
                                   " ORDER BY id", order_id)
    assert [h["status"] for h in history] == ["CREATED", "VALIDATED", "PAID", "RESERVED"]


async def _ignored(world: World, order_id: str, event_id: str) -> list[dict]:
    rows = await world.db.fetch("SELECT * FROM orders.ignored_events WHERE order_id = $1"
                                " AND event_id = $2", order_id, event_id)
    return [dict(r) for r in rows]


async def _came_back(world: World, durable: str, seq: int) -> bool:
    """The consumer was handed the event at `seq` and has not acked it yet, and an event of its
    came back after a refusal (the early one: nothing else is pending in this world)."""
    info = await world.operator.nc.jetstream().consumer_info(STREAM, durable)
    return (info.delivered.stream_seq >= seq > info.ack_floor.stream_seq
            and info.num_ack_pending >= 1 and info.num_redelivered >= 1)


async def _status(world: World, order_id: str) -> str:
    return await world.db.fetchval("SELECT status FROM orders.orders WHERE id = $1", order_id)


async def _status_is(world: World, order_id: str, status: str) -> bool:
    return await _status(world, order_id) == status


