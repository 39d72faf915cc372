"""The order saga end to end over a real NATS server: every set in one process, and each set in
its own `atlantic serve` process. What a customer and an operator see: replies, stock, money."""

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from urllib.request import urlopen

import pytest
from support import LIFECYCLE, check_event, eventually, read_events, world_of_its_own

from handlers.orders.deadlines import DEADLINE_REASON
from runtime.tools.bench.world import SAGA_SETS, World


@pytest.fixture(scope="module", params=["one-process", "process-per-set"])
async def world(request, settings) -> AsyncIterator[World]:
    shape = request.param
    async with world_of_its_own(settings, f"saga_{shape.replace('-', '_')}", sets=SAGA_SETS,
                                in_process=shape == "one-process", nats_users=True) as world:
        yield world


def statuses(order: dict) -> list[str]:
    return [change["status"] for change in order["history"]]


async def test_every_set_connects_to_nats_as_its_own_user(world: World):
    url = f"http://127.0.0.1:{world.nats.monitor_port}/connz?auth=true&limit=4096"
    connz = json.loads(await asyncio.to_thread(lambda: urlopen(url, timeout=5).read()))

    users = {}
    for connection in connz["connections"]:
        users.setdefault(connection.get("name", ""), set()).add(connection["authorized_user"])

    for name in SAGA_SETS:
        assert users[f"atlantic[{name}]"] == {name}, name
    assert not any(name.startswith("atlantic[") and "," in name for name in users), users


async def test_an_order_goes_from_created_to_delivered(world: World):
    customer, customer_id = await world.customer()
    lamp, shade = await world.product("25.00", 10), await world.product("7.50", 10)

    created = await world.order(customer, (lamp, 2), (shade, 1))
    reserved = await world.status_becomes(customer, created["orderId"], "RESERVED")
    shipment = await world.admin.call("atlantic.orders.ship",
                                      {"orderId": created["orderId"], "carrier": "DHL"})
    delivered = await world.admin.call("atlantic.orders.deliver", {"orderId": created["orderId"]})
    final = await world.status_becomes(customer, created["orderId"], "DELIVERED")

    assert created["status"] == "CREATED"
    assert created["totalPrice"] == 57.5
    assert created["customerId"] == customer_id
    assert {(i["productId"], i["quantity"], i["price"]) for i in created["items"]} == {
        (lamp, 2, 25.0), (shade, 1, 7.5)}
    assert statuses(reserved) == ["CREATED", "VALIDATED", "PAID", "RESERVED"]
    assert shipment.ok and shipment.body["carrier"] == "DHL"
    assert shipment.body["trackingNumber"] and shipment.body["shipmentId"]
    assert delivered.ok and delivered.body["status"] == "DELIVERED"
    assert statuses(final) == ["CREATED", "VALIDATED", "PAID", "RESERVED", "SHIPPED",
                               "DELIVERED"]
    assert final["shipment"]["trackingNumber"] == shipment.body["trackingNumber"]
    assert final["paidAmount"] == 57.5 and final["refundedAmount"] == 0
    # shipped stock has left the warehouse
    await eventually(lambda: _stock_is(world, lamp, onHand=8, reserved=0, available=8))
    assert (await world.payment(created["orderId"]))["state"] == "CHARGED"
    assert await world.charges(created["orderId"]) == 1


async def test_a_cancel_after_payment_refunds_and_releases_the_stock(world: World):
    customer, _ = await world.customer()
    lamp = await world.product("40.00", 5)
    created = await world.order(customer, (lamp, 3))
    await world.status_becomes(customer, created["orderId"], "RESERVED")

    cancel = await customer.call("atlantic.orders.cancel",
                                 {"orderId": created["orderId"], "reason": "changed my mind"})

    assert cancel.ok and cancel.body["status"] == "CANCELLED"

    async def refunded():
        order = (await customer.call("atlantic.orders.get", {"orderId": created["orderId"]})).body
        return order if order["refundedAmount"] == 120.0 else None

    order = await eventually(refunded)
    assert order["cancellationReason"] == "changed my mind"
    payment = await world.payment(created["orderId"])
    assert payment["state"] == "REFUNDED" and payment["refundedAmount"] == 120.0
    stock = await eventually(lambda: _stock_is(world, lamp, available=5))
    assert stock["onHand"] == 5 and stock["reserved"] == 0 and stock["held"] == 0


async def test_a_declined_payment_cancels_the_order_and_releases_the_hold(world: World):
    customer, _ = await world.customer()
    piano = await world.product("6000.00", 2)  # above the sandbox's 5,000 limit: declined

    created = await world.order(customer, (piano, 1))
    order = await world.status_becomes(customer, created["orderId"], "CANCELLED")

    assert statuses(order) == ["CREATED", "VALIDATED", "CANCELLED"]
    assert order["cancellationReason"] == "payment declined"
    assert order["paidAmount"] == 0 and order["refundedAmount"] == 0
    payment = await world.payment(created["orderId"])
    assert payment["state"] == "DECLINED" and payment["chargedAmount"] == 0
    await eventually(lambda: _stock_is(world, piano, available=2, held=0))


async def test_a_return_refunds_and_restocks(world: World):
    customer, _ = await world.customer()
    kettle = await world.product("30.00", 4)
    created = await world.order(customer, (kettle, 2))
    order_id = created["orderId"]
    await world.status_becomes(customer, order_id, "RESERVED")
    assert (await world.admin.call("atlantic.orders.ship",
                                   {"orderId": order_id, "carrier": "UPS"})).ok
    assert (await world.admin.call("atlantic.orders.deliver", {"orderId": order_id})).ok
    await eventually(lambda: _stock_is(world, kettle, onHand=2))

    returned = await customer.call("atlantic.orders.return",
                                   {"orderId": order_id, "reason": "too loud"})

    assert returned.ok and returned.body["status"] == "RETURNED"

    async def refunded():
        order = (await customer.call("atlantic.orders.get", {"orderId": order_id})).body
        return order if order["refundedAmount"] == 60.0 else None

    order = await eventually(refunded)
    assert order["returnReason"] == "too loud"
    assert statuses(order)[-1] == "RETURNED"
    assert (await world.payment(order_id))["refundedAmount"] == 60.0
    await eventually(lambda: _stock_is(world, kettle, onHand=4, available=4))


async def test_an_order_stuck_before_payment_is_cancelled_at_its_deadline(world: World):
    customer, customer_id = await world.customer()
    lamp = await world.product("10.00", 3)
    # An order the saga never finished: written as orders.create writes it, long ago, with its
    # OrderCreated lost (so nothing else will ever move it).
    from contracts.base import new_id
    from contracts.events import OrderCreated, OrderItem
    from storage import orders as store

    order_id = new_id()
    items = [OrderItem(product_id=lamp, quantity=1, price=Decimal("10.00"))]
    created = OrderCreated(order_id=order_id, customer_id=customer_id, items=items,
                           total_price=Decimal("10.00"))
    async with world.db.acquire() as db:
        await store.place(db, order_id, customer_id, items, Decimal("10.00"), created)
        await db.execute("DELETE FROM orders.outbox WHERE event_id = $1", created.event_id)
        deadline = world.settings.order_deadline_seconds
        await db.execute("UPDATE orders.orders SET created_at = now() - make_interval(secs => $2)"
                         " WHERE id = $1", order_id, deadline + 60)

    order = await world.status_becomes(customer, order_id, "CANCELLED")

    assert order["cancellationReason"] == DEADLINE_REASON
    payment = await eventually(lambda: _payment_state(world, order_id, "VOIDED"))
    assert payment["chargedAmount"] == 0


async def _stock_is(world: World, product_id: str, **expected) -> dict | None:
    stock = await world.stock(product_id)
    return stock if all(stock[k] == v for k, v in expected.items()) else None


async def _payment_state(world: World, order_id: str, state: str) -> dict | None:
    reply = await world.admin.call("atlantic.payments.get", {"orderId": order_id})
    return reply.body if reply.ok and reply.body["state"] == state else None


async def test_every_event_the_saga_emitted_is_shaped_as_design_says(world: World):
    """Runs last in its world: by now it holds deliveries, cancels, declines and returns."""
    subject_of = {name: subject for subject, (name, _) in LIFECYCLE.items()}

    emitted = await read_events(world.operator, "atlantic.events.order.>")

    assert {body["event"] for _, body in emitted} == set(subject_of)  # all eight appeared
    for headers, body in emitted:
        check_event(subject_of[body["event"]], headers, body)
