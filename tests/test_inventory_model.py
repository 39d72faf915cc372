"""Stock accounting at the storage layer, on real PostgreSQL: a hypothesis state machine drives
random holds, payments, cancels, shipments, returns, adjustments and expiries against a model,
and true concurrency (many connections at once) checks that holds never oversell."""

import asyncio
from collections import Counter

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from contracts.base import new_id
from contracts.catalog import CreateProduct
from contracts.errors import Conflict
from handlers.catalog import holds
from storage import catalog as catalog_db
from storage.migrations import apply_migrations

PRODUCTS = 2
STOCK_COLUMNS = ("on_hand", "held", "reserved")


@pytest.fixture(scope="module")
def storage(database):
    """A loop and connection of the test's own: hypothesis state machines are synchronous."""
    apply_migrations(database)
    loop = asyncio.new_event_loop()
    db = loop.run_until_complete(asyncpg.connect(database))
    yield loop, db
    loop.run_until_complete(db.close())
    loop.close()


class Model:
    """What the stock should be, computed independently of the SQL."""

    def __init__(self, stock: list[int]):
        self.stock = {i: {"on_hand": s, "held": 0, "reserved": 0} for i, s in enumerate(stock)}
        self.orders: dict[str, tuple[str, dict[int, int]]] = {}

    def available(self, product: int) -> int:
        s = self.stock[product]
        return s["on_hand"] - s["held"] - s["reserved"]

    def move(self, order_id: str, new_state: str, **columns: int) -> None:
        _, lines = self.orders[order_id]
        for product, quantity in lines.items():
            for column, sign in columns.items():
                self.stock[product][column] += sign * quantity
        self.orders[order_id] = (new_state, lines)

    def place(self, order_id: str, lines: dict[int, int]) -> bool:
        ok = all(self.available(p) >= q for p, q in lines.items())
        self.orders[order_id] = ("held" if ok else "rejected", lines)
        if ok:
            self.move(order_id, "held", held=1)
        return ok

    def pay(self, order_id: str) -> None:
        state, lines = self.orders[order_id]
        if state == "held":
            self.move(order_id, "reserved", held=-1, reserved=1)
        elif state == "expired":
            enough = all(self.available(p) >= q for p, q in lines.items())
            if enough:
                self.move(order_id, "reserved", reserved=1)
            else:
                self.move(order_id, "failed")

    def expire(self, order_id: str) -> None:
        if self.orders[order_id][0] == "held":
            self.move(order_id, "expired", held=-1)

    def transition(self, order_id: str, event: str) -> None:
        state = self.orders[order_id][0]
        moves = {
            ("payment_failed", "held"): ("released", {"held": -1}),
            ("cancel", "held"): ("released", {"held": -1}),
            ("cancel", "reserved"): ("released", {"reserved": -1}),
            ("cancel", "expired"): ("released", {}),
            ("cancel", "failed"): ("released", {}),
            ("ship", "reserved"): ("shipped", {"reserved": -1, "on_hand": -1}),
            ("return", "shipped"): ("returned", {"on_hand": 1}),
        }
        if (event, state) in moves:
            new_state, columns = moves[(event, state)]
            self.move(order_id, new_state, **columns)


class InventoryMachine(RuleBasedStateMachine):
    loop: asyncio.AbstractEventLoop
    db: asyncpg.Connection
    orders = Bundle("orders")

    def run(self, operation, *args):
        async def in_transaction():
            async with self.db.transaction():
                return await operation(self.db, *args)

        return self.loop.run_until_complete(in_transaction())

    @initialize(stock=st.lists(st.integers(0, 6), min_size=PRODUCTS, max_size=PRODUCTS))
    def create_products(self, stock):
        self.model = Model(stock)
        self.ids = []
        for quantity in stock:
            product = self.run(catalog_db.insert_product, new_id(), CreateProduct(
                name="Model product", price="1.00", category="model", stock=quantity))
            self.ids.append(product.product_id)

    @rule(target=orders, lines=st.dictionaries(st.integers(0, PRODUCTS - 1), st.integers(1, 3),
                                               min_size=1, max_size=PRODUCTS))
    def place_hold(self, lines):
        order_id = new_id()
        items = [(self.ids[p], q) for p, q in lines.items()]
        verdict = self.run(holds.place_hold, order_id, items, 3600)
        assert verdict.placed == self.model.place(order_id, lines)
        return order_id

    @rule(order_id=orders)
    def payment_succeeds(self, order_id):
        self.run(holds.reserve, order_id)
        self.model.pay(order_id)

    @rule(order_id=orders)
    def payment_fails(self, order_id):
        self.run(holds.release_after_failed_payment, order_id)
        self.model.transition(order_id, "payment_failed")

    @rule(order_id=orders)
    def cancel(self, order_id):
        self.run(holds.cancel, order_id)
        self.model.transition(order_id, "cancel")

    @rule(order_id=orders)
    def ship(self, order_id):
        self.run(holds.ship, order_id)
        self.model.transition(order_id, "ship")

    @rule(order_id=orders)
    def give_back(self, order_id):
        self.run(holds.restock, order_id)
        self.model.transition(order_id, "return")

    @rule(order_id=orders)
    def hold_expires_and_is_swept(self, order_id):
        self.run(_expire, order_id)
        self.run(_sweep_until_done)
        self.model.expire(order_id)

    @rule(order_id=orders)
    def payment_arrives_after_expiry_before_the_sweep(self, order_id):
        self.run(_expire, order_id)
        self.run(holds.reserve, order_id)
        self.model.expire(order_id)
        self.model.pay(order_id)

    @rule(product=st.integers(0, PRODUCTS - 1), delta=st.integers(-8, 8).filter(bool))
    def adjust(self, product, delta):
        stock = self.model.stock[product]
        allowed = stock["on_hand"] + delta >= stock["held"] + stock["reserved"]
        try:
            self.run(catalog_db.adjust_stock, self.ids[product], delta, "model", "tester")
            refused = False
        except Conflict:
            refused = True
        assert refused != allowed
        if allowed:
            stock["on_hand"] += delta

    @invariant()
    def stock_matches_the_model_and_adds_up(self):
        if not hasattr(self, "model"):
            return
        rows = self.run(_stock, self.ids)
        holds = self.run(_holds, list(self.model.orders))
        held, reserved = Counter(), Counter()
        for order_id, (state, lines) in self.model.orders.items():
            assert holds[order_id].state == state, order_id
            expected = {} if state == "rejected" else {self.ids[p]: q for p, q in lines.items()}
            assert holds[order_id].lines == expected
            for product, quantity in lines.items():
                held[product] += quantity if state == "held" else 0
                reserved[product] += quantity if state == "reserved" else 0
        for i, product_id in enumerate(self.ids):
            row = rows[product_id]
            assert {c: row[c] for c in STOCK_COLUMNS} == self.model.stock[i]
            assert row["on_hand"] == row["available"] + row["held"] + row["reserved"]
            assert min(row[c] for c in (*STOCK_COLUMNS, "available")) >= 0
            assert (row["held"], row["reserved"]) == (held[i], reserved[i])


async def _expire(db, order_id):
    await db.execute("UPDATE catalog.holds SET expires_at = now() - interval '1 second'"
                     " WHERE order_id = $1", order_id)


async def _sweep_until_done(db):
    # The running system's sweeper may take some of these; either way all end up released.
    while await catalog_db.release_expired(db, limit=100):
        pass


async def _stock(db, product_ids):
    rows = await db.fetch("SELECT id, on_hand, held, reserved,"
                          " on_hand - held - reserved AS available"
                          " FROM catalog.products WHERE id = ANY($1::text[])", product_ids)
    return {r["id"]: r for r in rows}


async def _holds(db, order_ids):
    return {order_id: await catalog_db.hold(db, order_id) for order_id in order_ids}


def test_stock_accounting_holds_under_random_saga_steps(storage):
    InventoryMachine.loop, InventoryMachine.db = storage
    run_state_machine_as_test(InventoryMachine, settings=settings(
        max_examples=80, stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))


async def test_concurrent_holds_on_many_connections_never_oversell(database):
    apply_migrations(database)
    pool = await asyncpg.create_pool(database, min_size=20, max_size=20)
    try:
        async with pool.acquire() as db:
            product = await catalog_db.insert_product(db, new_id(), CreateProduct(
                name="Scarce", price="9.99", category="test", stock=50))

        async def one_order():
            async with pool.acquire() as db, db.transaction():
                verdict = await holds.place_hold(db, new_id(), [(product.product_id, 1)], 3600)
                return verdict.placed

        placed = await asyncio.gather(*(one_order() for _ in range(200)))
        async with pool.acquire() as db:
            stock = await catalog_db.inventory(db, product.product_id)
    finally:
        await pool.close()

    assert sum(placed) == 50
    assert (stock.on_hand, stock.held, stock.available) == (50, 50, 0)


async def test_the_database_refuses_negative_stock_whatever_the_code_does(database):
    db = await asyncpg.connect(database)
    try:
        product = await catalog_db.insert_product(db, new_id(), CreateProduct(
            name="Guarded", price="1.00", category="test", stock=2))
        for assignment in ("on_hand = -1", "held = 3", "reserved = -1", "held = 1, reserved = 2"):
            with pytest.raises(asyncpg.CheckViolationError):
                await db.execute(f"UPDATE catalog.products SET {assignment} WHERE id = $1",
                                 product.product_id)
    finally:
        await db.close()
