"""The catalog set, over NATS, as a client sees it; the saga driven by publishing order events
to JetStream the way the orders and payments sets will."""

import asyncio
import itertools
import json
from decimal import Decimal

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from support import RUN_ID, eventually, read_events

from contracts.base import new_id
from contracts.catalog import (
    INVENTORY_ADJUST,
    INVENTORY_GET,
    PRODUCTS_CREATE,
    PRODUCTS_GET,
    PRODUCTS_LIST,
    PRODUCTS_UPDATE,
    QUOTE,
)
from contracts.events import (
    STREAM,
    Event,
    OrderCancelled,
    OrderCreated,
    OrderItem,
    OrderReturned,
    OrderShipped,
    PaymentProcessed,
)
from handlers.catalog import saga
from handlers.catalog.demo import demo_products
from runtime.tools.bootstrap import ensure_demo_catalog
from runtime.tools.services import free_port
from storage.migrations import apply_migrations
from storage.postgres import create_database, drop_database

_numbers = itertools.count()


def new_product(**overrides) -> dict:
    n = next(_numbers)
    return {"name": f"Test Kettle {n}", "description": "Boils water quickly",
            "price": "19.99", "category": f"Kitchen {RUN_ID}", "stock": 10,
            "sku": f"T-{RUN_ID}-{n}"} | overrides


async def create(admin, **overrides) -> dict:
    reply = await admin.call(PRODUCTS_CREATE, new_product(**overrides))
    assert reply.ok, reply.body
    return reply.body


async def stock_of(client, product_id: str) -> dict:
    reply = await client.call(INVENTORY_GET, {"productId": product_id})
    assert reply.ok, reply.body
    return reply.body


async def publish(client, event: Event, *, msg_id: str | None = None) -> int:
    """Publishes an event as its producing set's outbox relay would; returns its sequence."""
    ack = await client.nc.jetstream().publish(
        event.subject, event.model_dump_json().encode(), stream=STREAM,
        headers={"Nats-Msg-Id": msg_id or event.event_id})
    return ack.seq


async def consumed(client, durable: str, seq: int) -> None:
    """Waits until the durable consumer has acked everything up to stream sequence `seq`."""
    js = client.nc.jetstream()

    async def done():
        info = await js.consumer_info(STREAM, durable)
        return info.ack_floor.stream_seq >= seq and info.num_ack_pending == 0

    await eventually(done)


def order(product_id: str, quantity: int = 1, price: str = "19.99", **kw) -> OrderCreated:
    item = OrderItem(product_id=product_id, quantity=quantity, price=Decimal(price))
    return OrderCreated(order_id=kw.get("order_id", new_id()), customer_id="c-" + RUN_ID,
                        items=[item], total_price=Decimal(price) * quantity)


def paid(order_id: str, status: str = "SUCCESS") -> PaymentProcessed:
    return PaymentProcessed(order_id=order_id, payment_id=new_id(), payment_status=status,
                            amount=Decimal("19.99"))


async def events_for(client, subject: str, order_ids: set[str], count: int) -> list[dict]:
    async def found():
        events = [e for _, e in await read_events(client, subject) if e["orderId"] in order_ids]
        return events if len(events) >= count else None

    return await eventually(found)


async def stock_becomes(client, product_id: str, **expected) -> dict:
    async def check():
        stock = await stock_of(client, product_id)
        return stock if all(stock[k] == v for k, v in expected.items()) else None

    return await eventually(check)


# --- Products ---------------------------------------------------------------------------------

async def test_an_admin_creates_a_product_and_anyone_can_get_it(admin, client):
    created = await create(admin, price="12.50", stock=7)

    reply = await client.call(PRODUCTS_GET, {"productId": created["productId"]})

    assert reply.status == 200
    assert reply.body == created
    assert reply.body["price"] == 12.5
    assert reply.body["available"] == 7
    assert reply.body["active"] is True
    assert {"productId", "name", "price", "category", "active", "available"} <= set(reply.body)


async def test_creating_a_product_emits_product_created(admin, client):
    created = await create(admin)

    async def emitted():
        return [e for _, e in await read_events(client, "atlantic.events.product.created")
                if e["productId"] == created["productId"]]

    [event] = await eventually(emitted)

    assert event["sku"] == created["sku"]
    assert event["price"] == 19.99
    assert event["onHand"] == 10


async def test_a_sku_is_generated_when_left_out_and_must_be_unique(admin):
    product = new_product()
    del product["sku"]
    generated = (await admin.call(PRODUCTS_CREATE, product)).body

    taken = await admin.call(PRODUCTS_CREATE, new_product(sku=generated["sku"]))

    assert generated["sku"].startswith("SKU-")
    assert taken.status == 409
    assert taken.error_code == "sku_taken"


@pytest.mark.parametrize(("overrides", "fields"), [
    ({"price": "0"}, {"price"}),
    ({"price": "-3.00"}, {"price"}),
    ({"price": "1.005"}, {"price"}),
    ({"price": "cheap"}, {"price"}),
    ({"name": "", "category": "x" * 61}, {"name", "category"}),
    ({"stock": -1, "sku": "bad sku!"}, {"stock", "sku"}),
    ({"colour": "red"}, {"colour"}),
])
async def test_bad_product_fields_are_named(admin, overrides, fields):
    reply = await admin.call(PRODUCTS_CREATE, new_product(**overrides))

    assert reply.status == 422
    assert reply.error_fields == fields


async def test_missing_product_fields_are_named(admin):
    reply = await admin.call(PRODUCTS_CREATE, {"description": "nothing else"})

    assert reply.status == 422
    assert reply.error_fields == {"name", "price", "category"}


async def test_a_customer_may_not_create_update_or_adjust(admin, customer):
    product = await create(admin)

    replies = [
        await customer.call(PRODUCTS_CREATE, new_product()),
        await customer.call(PRODUCTS_UPDATE, {"productId": product["productId"], "price": "1.00"}),
        await customer.call(INVENTORY_ADJUST, {"productId": product["productId"], "delta": 5,
                                               "reason": "found more"}),
    ]

    assert [r.status for r in replies] == [403, 403, 403]
    assert {r.error_code for r in replies} == {"forbidden"}
    assert (await stock_of(admin, product["productId"]))["onHand"] == 10


async def test_an_anonymous_caller_may_not_create(client):
    reply = await client.call(PRODUCTS_CREATE, new_product())

    assert reply.status == 401


async def test_an_unknown_product_is_404(client, admin):
    get = await client.call(PRODUCTS_GET, {"productId": "no-such-product"})
    update = await admin.call(PRODUCTS_UPDATE, {"productId": "no-such-product", "name": "x"})

    assert get.status == update.status == 404


async def test_an_update_must_change_something_and_may_not_null_a_field(admin):
    product = await create(admin)

    empty = await admin.call(PRODUCTS_UPDATE, {"productId": product["productId"]})
    nulled = await admin.call(PRODUCTS_UPDATE, {"productId": product["productId"], "name": None})

    assert empty.status == nulled.status == 422
    assert nulled.error_fields == {"name"}


async def test_a_product_update_is_visible_on_the_next_get(admin, client, system, settings):
    product = await create(admin, price="10.00")
    await client.call(PRODUCTS_GET, {"productId": product["productId"]})  # now cached
    redis = system.context.get("redis")
    key = f"{settings.redis_prefix}catalog:product:{product['productId']}"
    assert await redis.exists(key)

    await admin.call(PRODUCTS_UPDATE, {"productId": product["productId"], "price": "12.50",
                                       "name": "Renamed Kettle"})
    reply = await client.call(PRODUCTS_GET, {"productId": product["productId"]})

    assert reply.body["price"] == 12.5
    assert reply.body["name"] == "Renamed Kettle"


async def test_a_cached_get_replies_with_the_same_bytes_and_headers_as_a_fresh_one(admin, client,
                                                                                 system):
    product = await create(admin)
    request = json.dumps({"productId": product["productId"]}).encode()

    fresh = await client.nc.request(PRODUCTS_GET, request, timeout=5)  # a miss: now cached
    cached = await client.nc.request(PRODUCTS_GET, request, timeout=5)

    assert await system.context.get("product_cache").stored(product["productId"])
    assert cached.data == fresh.data
    assert json.loads(cached.data)["productId"] == product["productId"]
    assert {k: v for k, v in cached.headers.items() if k != "correlation_id"} \
        == {k: v for k, v in fresh.headers.items() if k != "correlation_id"} \
        == {"content-type": "application/json"}


async def test_an_unexpected_failure_on_a_cached_get_is_answered_with_a_structured_error(
        admin, client, system, monkeypatch):
    product = await create(admin)

    async def broken(product_id: str) -> bytes:
        raise RuntimeError("a bug, not an outage")

    monkeypatch.setattr(system.context.get("product_cache"), "stored", broken)
    reply = await client.call(PRODUCTS_GET, {"productId": product["productId"]})

    assert reply.status == 500
    assert reply.error_code == "internal_error"
    assert reply.headers["Nats-Service-Error-Code"] == "500"
    assert "a bug" not in json.dumps(reply.body)


async def test_stock_changes_are_visible_on_the_next_get(admin, client):
    product = await create(admin, stock=10)
    await client.call(PRODUCTS_GET, {"productId": product["productId"]})  # now cached

    await admin.call(INVENTORY_ADJUST, {"productId": product["productId"], "delta": -4,
                                        "reason": "damaged"})
    reply = await client.call(PRODUCTS_GET, {"productId": product["productId"]})

    assert reply.body["available"] == 6


class RedisOutage:
    """Fault injection: the catalog's cache client is pointed at a port where nothing listens.
    The shared Redis server keeps running; `end` is Redis coming back with what it held."""

    def __init__(self, cache):
        self.cache, self.real = cache, cache._redis
        self.dead = Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2,
                          retry=Retry(NoBackoff(), 0))

    def start(self) -> None:
        self.cache._redis = self.dead

    def end(self) -> None:
        self.cache._redis = self.real


@pytest.fixture
async def redis_outage(system):
    outage = RedisOutage(system.context.get("product_cache"))
    yield outage
    outage.end()
    await outage.dead.aclose()


async def test_get_works_with_redis_down_and_is_never_stale(admin, client, redis_outage):
    product = await create(admin, price="10.00")
    pid = {"productId": product["productId"]}
    await client.call(PRODUCTS_GET, pid)  # cached at 10.00
    redis_outage.start()

    update = await admin.call(PRODUCTS_UPDATE, pid | {"price": "11.00"})
    while_down = await client.call(PRODUCTS_GET, pid)
    redis_outage.end()  # Redis is back, still holding the 10.00 entry
    after = await client.call(PRODUCTS_GET, pid)

    assert update.status == 200
    assert while_down.status == 200
    assert while_down.body["price"] == 11.0
    assert after.body["price"] == 11.0


# --- Listing ----------------------------------------------------------------------------------

async def list_all(client, request: dict) -> tuple[list[dict], int]:
    """Every item across pages, and how many pages it took."""
    items, cursor, pages = [], None, 0
    while True:
        reply = await client.call(PRODUCTS_LIST, request | ({"cursor": cursor} if cursor else {}))
        assert reply.ok, reply.body
        items += reply.body["items"]
        pages += 1
        if (cursor := reply.body["nextCursor"]) is None:
            return items, pages


async def test_pagination_returns_every_product_exactly_once(admin, client):
    category = f"Paged {new_id()[:8]}"
    # Equal names force the id tie-break of the keyset order.
    created = [await create(admin, category=category, name=f"Lamp {i % 3}") for i in range(23)]

    items, pages = await list_all(client, {"category": category, "limit": 5})

    assert sorted(i["productId"] for i in items) == sorted(p["productId"] for p in created)
    assert len(items) == 23
    assert pages == 5
    assert [(i["name"], i["productId"]) for i in items] == sorted(
        (i["name"], i["productId"]) for i in items)


async def test_list_filters_by_price_text_and_stock(admin, client):
    category = f"Filtered {new_id()[:8]}"
    cheap = await create(admin, category=category, price="5.00", name="Cheap Espresso Cup")
    dear = await create(admin, category=category, price="50.00", name="Copper Espresso Machine")
    empty = await create(admin, category=category, price="20.00", name="Tea Strainer", stock=0)
    await create(admin, category=category, name="Hidden Espresso", active=False)

    async def ids(**filters) -> set[str]:
        reply = await client.call(PRODUCTS_LIST, {"category": category} | filters)
        return {i["productId"] for i in reply.body["items"]}

    assert await ids() == {cheap["productId"], dear["productId"], empty["productId"]}
    assert await ids(minPrice=10, maxPrice="50.00") == {dear["productId"], empty["productId"]}
    assert await ids(q="espresso") == {cheap["productId"], dear["productId"]}
    assert await ids(q="machines") == {dear["productId"]}  # stemmed
    assert await ids(inStock=True) == {cheap["productId"], dear["productId"]}


@pytest.mark.parametrize(("request_body", "fields"), [
    ({"limit": 0}, {"limit"}),
    ({"limit": 101}, {"limit"}),
    ({"cursor": "not-a-cursor"}, {"cursor"}),
    ({"minPrice": -1, "q": ""}, {"minPrice", "q"}),
    ({"minPrice": 10, "maxPrice": 5}, {"body"}),
    ({"page": 2}, {"page"}),
])
async def test_bad_list_requests_name_their_fields(client, request_body, fields):
    reply = await client.call(PRODUCTS_LIST, request_body)

    assert reply.status == 422
    assert reply.error_fields == fields


# --- Inventory and quotes ---------------------------------------------------------------------

async def test_adjusting_stock_changes_on_hand_and_emits_events(admin, client):
    product = await create(admin, stock=8, **{"lowStockThreshold": 5})
    pid = product["productId"]

    added = await admin.call(INVENTORY_ADJUST, {"productId": pid, "delta": 2, "reason": "count"})
    removed = await admin.call(INVENTORY_ADJUST, {"productId": pid, "delta": -7,
                                                  "reason": "water damage"})

    assert added.body == {"productId": pid, "onHand": 10, "held": 0, "reserved": 0,
                          "available": 10, "lowStockThreshold": 5}
    assert removed.body["onHand"] == removed.body["available"] == 3
    adjusted = await eventually(lambda: _events(client, "atlantic.events.inventory.adjusted",
                                                pid, 2))
    assert [(e["delta"], e["reason"]) for e in adjusted] == [(2, "count"), (-7, "water damage")]
    [low] = await eventually(lambda: _events(client, "atlantic.events.inventory.low", pid, 1))
    assert (low["available"], low["threshold"]) == (3, 5)


async def _events(client, subject: str, product_id: str, count: int):
    found = [e for _, e in await read_events(client, subject) if e["productId"] == product_id]
    return found if len(found) >= count else None


async def test_stock_cannot_be_adjusted_below_zero(admin):
    product = await create(admin, stock=3)

    reply = await admin.call(INVENTORY_ADJUST, {"productId": product["productId"], "delta": -4,
                                                "reason": "shrinkage"})

    assert reply.status == 409
    assert reply.error_code == "insufficient_stock"
    assert (await stock_of(admin, product["productId"]))["onHand"] == 3


async def test_bad_adjustments_name_their_fields(admin):
    reply = await admin.call(INVENTORY_ADJUST, {"productId": "p", "delta": 0, "reason": ""})

    assert reply.status == 422
    assert reply.error_fields == {"delta", "reason"}


async def test_a_quote_prices_each_item_and_names_problems(admin, client):
    kettle = await create(admin, price="19.99", stock=5)
    retired = await create(admin, active=False)

    reply = await client.call(QUOTE, {"items": [
        {"productId": kettle["productId"], "quantity": 2},
        {"productId": retired["productId"], "quantity": 1},
        {"productId": "no-such-product", "quantity": 1},
    ]})
    enough = await client.call(QUOTE, {"items": [{"productId": kettle["productId"],
                                                  "quantity": 6}]})

    assert reply.status == 200
    assert [i["problem"] for i in reply.body["items"]] == [None, "inactive", "not_found"]
    assert reply.body["items"][0]["price"] == 19.99
    assert reply.body["totalPrice"] == 39.98
    assert reply.body["ok"] is False
    assert enough.body["items"][0]["problem"] == "insufficient_stock"


async def test_bad_quotes_name_their_fields(client):
    duplicate = await client.call(QUOTE, {"items": [{"productId": "a", "quantity": 1},
                                                    {"productId": "a", "quantity": 2}]})
    zero = await client.call(QUOTE, {"items": [{"productId": "a", "quantity": 0}]})
    empty = await client.call(QUOTE, {"items": []})

    assert duplicate.error_fields == {"items"}
    assert zero.error_fields == {"items.0.quantity"}
    assert empty.error_fields == {"items"}


# --- The order saga ---------------------------------------------------------------------------

async def test_200_concurrent_orders_for_50_in_stock_validate_exactly_50(admin, client):
    product = await create(admin, stock=50)
    orders = [order(product["productId"]) for _ in range(200)]

    await asyncio.gather(*(publish(client, o) for o in orders))
    verdicts = await events_for(client, "atlantic.events.order.validated",
                                {o.order_id for o in orders}, 200)

    assert len(verdicts) == 200
    assert sum(v["isValid"] for v in verdicts) == 50
    assert all(v["validationErrors"] for v in verdicts if not v["isValid"])
    stock = await stock_of(client, product["productId"])
    assert (stock["onHand"], stock["held"], stock["available"]) == (50, 50, 0)


async def test_the_same_order_created_delivered_twice_places_one_hold(admin, client):
    product = await create(admin, stock=10)
    created = order(product["productId"], quantity=3)
    again = created.model_copy(update={"event_id": new_id()})  # same order, new event id

    await publish(client, created)
    await publish(client, created, msg_id=new_id())  # past JetStream's de-duplication
    last = await publish(client, again)
    await consumed(client, saga.STOCK_CONSUMER, last)

    stock = await stock_of(client, product["productId"])
    verdicts = await events_for(client, "atlantic.events.order.validated", {created.order_id}, 1)
    assert (stock["held"], stock["available"]) == (3, 7)
    assert len(verdicts) == 1


async def test_an_order_for_missing_inactive_or_short_stock_is_invalid(admin, client):
    short = await create(admin, stock=1)
    retired = await create(admin, active=False)
    created = order(short["productId"], quantity=2)
    created.items.append(OrderItem(product_id=retired["productId"], quantity=1, price=1))
    created.items.append(OrderItem(product_id="no-such-product", quantity=1, price=1))

    await publish(client, created)
    [verdict] = await events_for(client, "atlantic.events.order.validated", {created.order_id}, 1)

    assert verdict["isValid"] is False
    assert len(verdict["validationErrors"]) == 3
    assert (await stock_of(client, short["productId"]))["held"] == 0


async def test_payment_success_reserves_then_shipping_and_return_move_on_hand(admin, client):
    product = await create(admin, stock=10)
    pid = product["productId"]
    created = order(pid, quantity=4)
    await publish(client, created)
    await stock_becomes(client, pid, held=4)

    await publish(client, paid(created.order_id))
    [reserved] = await events_for(client, "atlantic.events.order.inventory_reserved",
                                  {created.order_id}, 1)
    after_payment = await stock_becomes(client, pid, reserved=4)
    await publish(client, OrderShipped(order_id=created.order_id, shipment_id=new_id(),
                                       carrier="DHL", tracking_number="1Z999"))
    after_shipping = await stock_becomes(client, pid, onHand=6, reserved=0)
    await publish(client, OrderReturned(order_id=created.order_id, return_reason="too small",
                                        refund_amount=Decimal("79.96")))
    after_return = await stock_becomes(client, pid, onHand=10)

    assert reserved["items"] == [{"productId": pid, "quantity": 4}]
    assert (after_payment["held"], after_payment["available"]) == (0, 6)
    assert after_shipping["available"] == 6
    assert after_return["available"] == 10


@pytest.mark.parametrize("releasing_event", ["cancel", "payment failure"])
async def test_cancel_and_payment_failure_release_the_hold(admin, client, releasing_event):
    product = await create(admin, stock=10)
    created = order(product["productId"], quantity=4)
    await publish(client, created)
    await stock_becomes(client, product["productId"], held=4)

    if releasing_event == "cancel":
        await publish(client, OrderCancelled(order_id=created.order_id,
                                             cancellation_reason="changed my mind"))
    else:
        await publish(client, paid(created.order_id, "FAILED"))
    stock = await stock_becomes(client, product["productId"], held=0)

    assert stock["available"] == 10


async def test_a_cancel_after_payment_releases_the_reservation(admin, client):
    product = await create(admin, stock=5)
    created = order(product["productId"], quantity=2)
    await publish(client, created)
    await stock_becomes(client, product["productId"], held=2)
    await publish(client, paid(created.order_id))
    await stock_becomes(client, product["productId"], reserved=2)

    await publish(client, OrderCancelled(order_id=created.order_id, cancellation_reason="late"))
    stock = await stock_becomes(client, product["productId"], reserved=0)

    assert stock["available"] == 5


async def test_a_cancel_that_overtakes_its_order_leaves_nothing_held(admin, client):
    product = await create(admin, stock=5)
    created = order(product["productId"], quantity=2)

    await publish(client, OrderCancelled(order_id=created.order_id, cancellation_reason="quick"))
    await consumed(client, saga.STOCK_CONSUMER, await publish(client, OrderCancelled(
        order_id=new_id(), cancellation_reason="barrier")))
    last = await publish(client, created)
    await consumed(client, saga.STOCK_CONSUMER, last)

    assert (await stock_of(client, product["productId"]))["held"] == 0


async def expire_holds(system, order_id: str) -> None:
    """Moves an order's hold expiry into the past: the clock, fast-forwarded for one order."""
    pool = system.context.get("resources").pool
    await pool.execute("UPDATE catalog.holds SET expires_at = now() - interval '1 second'"
                       " WHERE order_id = $1", order_id)


async def test_an_expired_hold_is_released_by_the_sweeper(admin, client, system):
    product = await create(admin, stock=5)
    created = order(product["productId"], quantity=3)
    await publish(client, created)
    await stock_becomes(client, product["productId"], held=3)

    await expire_holds(system, created.order_id)
    stock = await stock_becomes(client, product["productId"], held=0)

    assert stock["available"] == 5


async def test_payment_after_expiry_reserves_if_stock_remains_else_fails(admin, client, system):
    product = await create(admin, stock=3)
    pid = product["productId"]
    lucky, unlucky = order(pid, quantity=1), order(pid, quantity=3)
    for created in (lucky, unlucky):
        await publish(client, created)
        await stock_becomes(client, pid, held=created.items[0].quantity)
        await expire_holds(system, created.order_id)
        await stock_becomes(client, pid, held=0)
    taker = order(pid, quantity=2)  # takes stock the expired holds let go
    await publish(client, taker)
    await stock_becomes(client, pid, held=2)

    await publish(client, paid(lucky.order_id))
    await publish(client, paid(unlucky.order_id))
    [reserved] = await events_for(client, "atlantic.events.order.inventory_reserved",
                                  {lucky.order_id, unlucky.order_id}, 1)
    [failed] = await events_for(client, "atlantic.events.inventory.reservation_failed",
                                {lucky.order_id, unlucky.order_id}, 1)

    assert reserved["orderId"] == lucky.order_id
    assert failed["orderId"] == unlucky.order_id
    assert await stock_becomes(client, pid, onHand=3, held=2, reserved=1, available=0)


# --- The demo catalog -------------------------------------------------------------------------

def test_the_demo_catalog_is_the_same_every_time_and_looks_like_a_shop():
    first, second = demo_products(), demo_products()

    assert first == second
    assert 200 <= len(first) <= 500
    assert len({p.sku for _, p in first}) == len({pid for pid, _ in first}) == len(first)
    assert len({p.category for _, p in first}) >= 8
    assert all(Decimal("1") <= p.price <= Decimal("2000") for _, p in first)
    assert any(p.stock == 0 for _, p in first) and any(p.stock >= 100 for _, p in first)


async def test_up_loads_the_demo_catalog_once(settings):
    dsn = settings.postgres_dsn.replace(f"atlantic_test_{RUN_ID}", f"atlantic_test_{RUN_ID}_demo")
    await create_database(dsn)
    try:
        await asyncio.to_thread(apply_migrations, dsn)
        own = settings.model_copy(update={"postgres_dsn": dsn})

        first = await ensure_demo_catalog(own)
        second = await ensure_demo_catalog(own)
        db = await asyncpg.connect(dsn)
        count = await db.fetchval("SELECT count(*) FROM catalog.products")
        queued = await db.fetchval("SELECT count(*) FROM catalog.outbox")
        await db.close()
    finally:
        await drop_database(dsn)

    assert first == f"loaded the demo catalog: {len(demo_products())} products"
    assert second == "the catalog has products"
    assert count == queued == len(demo_products())
