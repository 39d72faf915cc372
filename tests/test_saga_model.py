"""The whole saga under hypothesis: random creates, declines, cancels, shipments, deliveries,
returns and hold expiries, with every event delivered to every consumer in a random order and
some delivered twice. The sets' real handlers run on real PostgreSQL and Redis; the "bus" is
this test, so it can reorder and repeat deliveries as JetStream may.

Checked after every step: only legal status transitions, final states stay final, no figure
goes negative, at most one charge per order. Checked once everything is delivered: every order
settled, money charged minus refunded matches its status, and stock matches what shipped."""

import asyncio
from decimal import Decimal

import asyncpg
import pytest
from faststream.context import ContextRepo
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis
from support import RUN_ID

from contracts import events
from contracts.base import new_id
from contracts.errors import Conflict
from contracts.orders import CancelOrder, DeliverOrder, ReturnOrder, ShipOrder
from handlers.batches import Delivery, apply
from handlers.catalog import catalog
from handlers.orders import orders
from handlers.orders import requests as order_requests
from handlers.orders.lifecycle import FINAL, NEXT
from handlers.payments import payments
from handlers.payments.provider import SandboxProvider
from runtime.settings import Settings
from storage import catalog as catalog_db
from storage import orders as order_store
from storage import outbox
from storage.cache import ProductCache
from storage.migrations import apply_migrations
from storage.postgres import create_database, drop_database
from storage.sessions import SessionInfo

PRICES = (Decimal("10.00"), Decimal("20.00"))
STOCK = 3
DECLINE_ABOVE = Decimal("35.00")  # orders above this are declined by the sandbox
ADMIN = SessionInfo("admin", "admin", "x")
SETTLED = {"RESERVED", "SHIPPED", "DELIVERED", "CANCELLED", "RETURNED"}
MONEY_KEPT = {"PAID", "RESERVED", "SHIPPED", "DELIVERED"}
EVENT_CLASSES = {c.subject: c for c in events.EVENT_TYPES.values()}
# Every consumer of the saga, as the sets declare them: (schema, consumer).
CONSUMERS = [(hs.outbox_schema, c) for hs in (catalog, orders, payments) for c in hs.consumers]


@pytest.fixture(scope="module")
def world(settings):
    """A database of its own (no relay may publish these outboxes) and a loop of its own
    (hypothesis state machines are synchronous)."""
    dsn = settings.postgres_dsn.replace(f"atlantic_test_{RUN_ID}",
                                        f"atlantic_test_{RUN_ID}_sagamodel")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # asyncpg looks the loop up while connecting
    loop.run_until_complete(create_database(dsn))
    apply_migrations(dsn)
    pool = loop.run_until_complete(asyncpg.create_pool(dsn, min_size=1, max_size=4))
    redis = Redis.from_url(settings.redis_url)
    cache = ProductCache(redis, f"atlantic-test-{RUN_ID}-model:", ttl_seconds=5)
    yield loop, pool, cache
    loop.run_until_complete(pool.close())
    loop.run_until_complete(redis.aclose())
    loop.run_until_complete(drop_database(dsn))
    loop.close()
    asyncio.set_event_loop(None)


class Saga(RuleBasedStateMachine):
    def __init__(self, loop, pool, cache):
        super().__init__()
        self.loop, self.pool, self.cache = loop, pool, cache
        self.context = ContextRepo()
        self.context.set_global("settings", Settings(hold_seconds=600.0))
        self.context.set_global("product_cache", cache)
        self.context.set_global("payment_provider",
                                SandboxProvider(pool, DECLINE_ABOVE, frozenset()))
        self.orders: list[tuple[str, str]] = []  # (order id, customer id)
        self.pending: list[tuple[int, events.Event]] = []  # (consumer, event) not yet handled
        self.products = [self.run(self._product(price)) for price in PRICES]

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    async def _product(self, price: Decimal) -> str:
        from contracts.catalog import CreateProduct

        async with self.pool.acquire() as db, db.transaction():
            product = await catalog_db.insert_product(db, new_id(), CreateProduct(
                name="Model Lamp", price=price, category="Model", stock=STOCK,
                sku=f"M-{new_id()}"))
        return product.product_id

    # --- the bus: outbox rows become deliveries, one per consumer -------------------------

    def _consumers(self, event: events.Event) -> list[int]:
        return [n for n, (_, consumer) in enumerate(CONSUMERS)
                if event.subject in consumer.subjects]

    async def _harvest(self) -> None:
        async with self.pool.acquire() as db, db.transaction():
            for schema in ("orders", "payments", "catalog"):
                for row in await outbox.claim_unpublished(db, schema, limit=1000):
                    event = EVENT_CLASSES[row.subject].model_validate_json(row.payload)
                    self.pending += [(c, event) for c in self._consumers(event)]
                    await outbox.mark_published(db, schema, [row.event_id])

    async def _handle(self, consumer: int, event: events.Event) -> bool:
        """Delivers one event to one consumer, as a batch of one, through the same code the
        consumers run; False when it asks for a redelivery later."""
        schema, declared = CONSUMERS[consumer]
        applied = await apply(self.pool, schema, declared.durable, declared.handler,
                              [Delivery(event, event.event_id)], self.context)
        await self._harvest()
        return not applied.retries

    # --- what customers, operators and the bus do -----------------------------------------

    @rule(lines=st.dictionaries(st.sampled_from([0, 1]), st.integers(1, 2), min_size=1))
    def create(self, lines):
        order_id, customer_id = new_id(), new_id()
        items = [events.OrderItem(product_id=self.products[p], quantity=q, price=PRICES[p])
                 for p, q in sorted(lines.items())]
        total = sum(i.price * i.quantity for i in items)

        async def place():  # what orders.create does once the catalog has quoted
            async with self.pool.acquire() as db:
                await order_store.place(db, order_id, customer_id, items, total,
                                        events.OrderCreated(order_id=order_id,
                                                            customer_id=customer_id,
                                                            items=items, total_price=total))
            await self._harvest()

        self.run(place())
        self.orders.append((order_id, customer_id))

    @precondition(lambda self: self.pending)
    @rule(pick=st.integers(0, 10**6), again=st.booleans())
    def deliver(self, pick, again):
        """One delivery, in any order; `again` keeps it for a redelivery (a lost ack)."""
        consumer, event = self.pending[pick % len(self.pending)]
        if self.run(self._handle(consumer, event)) and not again:
            self.pending.remove((consumer, event))

    def _request(self, handler, request, session) -> None:
        async def call():
            async with self.pool.acquire() as db:
                try:
                    await handler(request, session, db, *([30.0] if handler is
                                                          order_requests.return_order else []))
                except Conflict:
                    return  # not allowed in this status: the customer got a 409
            await self._harvest()

        self.run(call())

    @precondition(lambda self: self.orders)
    @rule(pick=st.integers(0, 10**6))
    def cancel(self, pick):
        order_id, customer_id = self.orders[pick % len(self.orders)]
        self._request(order_requests.cancel_order, CancelOrder(order_id=order_id),
                      SessionInfo(customer_id, "customer", "x"))

    @precondition(lambda self: self.orders)
    @rule(pick=st.integers(0, 10**6))
    def ship(self, pick):
        order_id, _ = self.orders[pick % len(self.orders)]
        self._request(order_requests.ship_order, ShipOrder(order_id=order_id, carrier="DHL"),
                      ADMIN)

    @precondition(lambda self: self.orders)
    @rule(pick=st.integers(0, 10**6))
    def deliver_order(self, pick):
        order_id, _ = self.orders[pick % len(self.orders)]
        self._request(order_requests.deliver_order, DeliverOrder(order_id=order_id), ADMIN)

    @precondition(lambda self: self.orders)
    @rule(pick=st.integers(0, 10**6))
    def return_order(self, pick):
        order_id, customer_id = self.orders[pick % len(self.orders)]
        self._request(order_requests.return_order, ReturnOrder(order_id=order_id, reason="no"),
                      SessionInfo(customer_id, "customer", "x"))

    @precondition(lambda self: self.orders)
    @rule(pick=st.integers(0, 10**6))
    def expire_hold(self, pick):
        order_id, _ = self.orders[pick % len(self.orders)]

        async def expire():
            async with self.pool.acquire() as db, db.transaction():
                await db.execute("UPDATE catalog.holds SET expires_at = now() - interval '1 s'"
                                 " WHERE order_id = $1", order_id)
                await catalog_db.release_expired(db, limit=100)

        self.run(expire())

    # --- what must always hold ------------------------------------------------------------

    def _query(self, sql: str, *args):
        return self.run(self.pool.fetch(sql, *args))

    @invariant()
    def only_legal_transitions_and_finals_stay_final(self):
        histories: dict[str, list[str]] = {}
        for row in self._query("SELECT order_id, status FROM orders.history ORDER BY id"):
            histories.setdefault(row["order_id"], []).append(row["status"])
        for order_id, statuses in histories.items():
            assert statuses[0] == "CREATED", (order_id, statuses)
            for before, after in zip(statuses, statuses[1:], strict=False):
                assert after in NEXT[before], (order_id, statuses)
                assert before not in FINAL, (order_id, statuses)

    @invariant()
    def no_stock_figure_is_negative_and_nothing_is_oversold(self):
        for row in self._query("SELECT on_hand, held, reserved FROM catalog.products"):
            assert min(row.values()) >= 0
            assert row["held"] + row["reserved"] <= row["on_hand"]

    @invariant()
    def at_most_one_charge_per_order_and_refunds_within_it(self):
        for row in self._query("SELECT reference, count(*) AS n FROM payments.sandbox_ledger"
                               " WHERE kind = 'charge' GROUP BY idempotency_key, reference"):
            assert row["n"] == 1
        for row in self._query("SELECT charged_amount, refunded_amount, amount"
                               " FROM payments.payments"):
            assert 0 <= row["refunded_amount"] <= row["charged_amount"] <= row["amount"]

    def teardown(self):
        """Delivers everything still pending, then checks money and stock end to end."""
        for _ in range(10_000):
            if not self.pending:
                break
            self.deliver(0, False)
        assert not self.pending, f"stuck deliveries: {self.pending[:3]}"
        orders = {r["id"]: r for r in self._query(
            "SELECT o.id, o.status, o.total_price, o.paid_amount, o.refunded_amount,"
            " coalesce(p.charged_amount, 0) AS charged, coalesce(p.refunded_amount, 0) AS back"
            " FROM orders.orders o LEFT JOIN payments.payments p ON p.order_id = o.id")}
        for order_id, o in orders.items():
            assert o["status"] in SETTLED, (order_id, o["status"])
            kept = o["total_price"] if o["status"] in MONEY_KEPT else 0
            assert o["charged"] - o["back"] == kept, dict(o)
            assert o["paid_amount"] - o["refunded_amount"] == kept, dict(o)
        lines = self._query(
            "SELECT i.product_id, i.quantity, o.status FROM orders.order_items i"
            " JOIN orders.orders o ON o.id = i.order_id")
        for product_id in self.products:
            [stock] = self._query("SELECT on_hand, held, reserved FROM catalog.products"
                                  " WHERE id = $1", product_id)
            mine = [line for line in lines if line["product_id"] == product_id]
            shipped = sum(li["quantity"] for li in mine if li["status"] in ("SHIPPED",
                                                                             "DELIVERED"))
            reserved = sum(li["quantity"] for li in mine if li["status"] == "RESERVED")
            assert stock["held"] == 0, dict(stock)
            assert stock["reserved"] == reserved, (dict(stock), reserved)
            assert stock["on_hand"] == STOCK - shipped, (dict(stock), shipped)


def test_the_saga_keeps_its_promises_under_any_interleaving(world):
    loop, pool, cache = world
    run_state_machine_as_test(lambda: Saga(loop, pool, cache), settings=settings(
        max_examples=25, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
