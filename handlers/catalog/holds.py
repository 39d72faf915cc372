"""The state machine of the stock an order holds (DESIGN "The order saga", steps 2, 4 and 6).

A table beside the order lifecycle (handlers/orders/lifecycle.py), and pure but for two calls
to storage: a StockBook holds a batch's holds and the stock of their products as storage locked
them (`open`), applies each event in memory (place, reserve, or a release-like move from the
MOVES table), and hands storage what changed to write in one statement (`write`). A move that
is not legal in the hold's state changes nothing and says so (its Transition has before ==
after).
"""

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from storage import catalog as catalog_db
from storage.catalog import HoldRow, HoldState, LowStock, StockChange, StockRow, fell_below
from storage.postgres import Write


@dataclass(frozen=True, slots=True)
class HoldVerdict:
    """The outcome of checking an order: a hold placed, or the reasons it could not be."""

    errors: list[str]
    change: StockChange = field(default_factory=StockChange)

    @property
    def placed(self) -> bool:
        return not self.errors


@dataclass(frozen=True, slots=True)
class Transition:
    """A hold moved from `before` to `after` (equal when the event did not apply)."""

    before: HoldState | None
    after: HoldState | None
    change: StockChange = field(default_factory=StockChange)

    @property
    def applied(self) -> bool:
        return self.before != self.after


# What each release-like event does, by the hold's state: the columns to move and the new state.
MOVES: dict[str, dict[str, tuple[dict[str, int], HoldState]]] = {
    "payment_failed": {"held": ({"held": -1}, "released")},
    "cancel": {"held": ({"held": -1}, "released"), "reserved": ({"reserved": -1}, "released"),
               "expired": ({}, "released"), "failed": ({}, "released")},
    "ship": {"reserved": ({"reserved": -1, "on_hand": -1}, "shipped")},
    "return": {"shipped": ({"on_hand": 1}, "returned")},
}


def shortfalls(wanted: dict[str, int], stock: dict[str, StockRow], *, for_sale: bool = True
               ) -> list[str]:
    errors = []
    for product_id, quantity in wanted.items():
        row = stock.get(product_id)
        if row is None:
            errors.append(f"product {product_id} does not exist")
        elif for_sale and not row.active:
            errors.append(f"product {product_id} is not for sale")
        elif row.available < quantity:
            errors.append(f"product {product_id}: {quantity} requested,"
                          f" {max(row.available, 0)} available")
    return errors


class StockBook:
    """The holds of a batch's orders and the stock of their products, changed in memory event by
    event in order; `open` locks them for one transaction and `write` stores the outcome."""

    def __init__(self, holds: dict[str, HoldRow], stock: dict[str, StockRow]):
        self.holds, self.stock = holds, stock
        self._before = {h: hold.state for h, hold in holds.items()}
        self._moved: dict[str, list[int]] = {}  # product -> [on_hand, held, reserved] deltas
        self.touched: set[str] = set()

    @classmethod
    async def open(cls, db: asyncpg.Connection, order_ids: Iterable[str],
                   product_ids: Iterable[str] = ()) -> "StockBook":
        """Locks the orders' holds and every product they or `product_ids` name."""
        return cls(*await catalog_db.lock_holds(db, order_ids, product_ids))

    def changes(self) -> Write:
        """New holds with their lines, the states that changed, and the stock moved."""
        new = {o: self.holds[o] for o in sorted(self.holds) if o not in self._before}
        changed = {o: self.holds[o].state for o, before in sorted(self._before.items())
                   if self.holds[o].state != before}
        moved = {p: m for p, m in sorted(self._moved.items()) if any(m)}
        return catalog_db.hold_changes(new, changed, moved)

    # -- the moves -------------------------------------------------------------------------------

    def place_hold(self, order_id: str, items: Iterable[tuple[str, int]],
                   hold_seconds: float) -> HoldVerdict | None:
        """Checks an order's items and holds their stock until the expiry. None when this order
        was already decided (a duplicate OrderCreated, or a cancel that arrived first)."""
        if order_id in self.holds:
            return None
        wanted: Counter[str] = Counter()
        for product_id, quantity in items:
            wanted[product_id] += quantity
        if errors := shortfalls(dict(sorted(wanted.items())), self.stock):
            self.holds[order_id] = HoldRow("rejected", False, {}, hold_seconds)
            return HoldVerdict(errors)
        self.holds[order_id] = HoldRow("held", False, dict(sorted(wanted.items())), hold_seconds)
        return HoldVerdict([], self._shift(order_id, held=1))

    def reserve(self, order_id: str) -> Transition:
        """Payment succeeded: the hold becomes a reservation. A hold past its expiry has released
        its stock (or is about to); the order gets it back if it is still available, else the
        hold ends `failed`."""
        hold = self.holds.get(order_id)
        if hold is None:
            return Transition(None, None)
        state = hold.state
        if state == "held" and not hold.expired:
            return self._set(order_id, "reserved", self._shift(order_id, held=-1, reserved=1))
        if state not in ("held", "expired"):
            return Transition(state, state)
        if state == "held":  # expired but not yet swept: give the stock back first
            self._shift(order_id, held=-1)
        # Paid for already: only the stock counts now, not whether the product is still listed.
        if shortfalls(hold.lines, self.stock, for_sale=False):
            return self._set(order_id, "failed", StockChange(sorted(hold.lines.items())))
        return self._set(order_id, "reserved", self._shift(order_id, reserved=1))

    def move(self, order_id: str, event: str) -> Transition:
        """A release-like event (see MOVES); a cancel that overtakes its OrderCreated leaves a
        `cancelled` mark, so the late OrderCreated holds nothing."""
        hold = self.holds.get(order_id)
        if hold is None:
            if event != "cancel":
                return Transition(None, None)
            hold = self.holds[order_id] = HoldRow("cancelled", True, {})
        if hold.state not in MOVES[event]:
            return Transition(hold.state, hold.state)
        columns, after = MOVES[event][hold.state]
        return self._set(order_id, after, self._shift(order_id, **columns) if columns
                         else StockChange())

    def _set(self, order_id: str, state: HoldState, change: StockChange) -> Transition:
        hold = self.holds[order_id]
        before, hold.state = hold.state, state
        return Transition(before, state, change)

    def _shift(self, order_id: str, *, on_hand: int = 0, held: int = 0,
               reserved: int = 0) -> StockChange:
        """Moves each of the order's line quantities between the stock columns."""
        taken = -(on_hand - held - reserved)  # how much available stock each unit took
        low: list[LowStock] = []
        lines = sorted(self.holds[order_id].lines.items())
        for product_id, quantity in lines:
            row = self.stock[product_id]
            row.on_hand += on_hand * quantity
            row.held += held * quantity
            row.reserved += reserved * quantity
            moved = self._moved.setdefault(product_id, [0, 0, 0])
            moved[0] += on_hand * quantity
            moved[1] += held * quantity
            moved[2] += reserved * quantity
            low += fell_below(product_id, row.available, taken * quantity, row.threshold)
            self.touched.add(product_id)
        return StockChange(lines, low)


# --- one event through a book of its own (the inventory model test drives holds this way) -----

async def _one(db: asyncpg.Connection, order_id: str, move: Callable[[StockBook], Any],
               product_ids: Iterable[str] = ()) -> Any:
    """Call inside a transaction."""
    book = await StockBook.open(db, [order_id], product_ids)
    outcome = move(book)
    await book.changes().run(db)
    return outcome


async def place_hold(db: asyncpg.Connection, order_id: str, items: Iterable[tuple[str, int]],
                     hold_seconds: float) -> HoldVerdict | None:
    items = list(items)
    return await _one(db, order_id, lambda book: book.place_hold(order_id, items, hold_seconds),
                      [p for p, _ in items])


async def reserve(db: asyncpg.Connection, order_id: str) -> Transition:
    return await _one(db, order_id, lambda book: book.reserve(order_id))


async def release_after_failed_payment(db: asyncpg.Connection, order_id: str) -> Transition:
    return await _one(db, order_id, lambda book: book.move(order_id, "payment_failed"))


async def cancel(db: asyncpg.Connection, order_id: str) -> Transition:
    return await _one(db, order_id, lambda book: book.move(order_id, "cancel"))


async def ship(db: asyncpg.Connection, order_id: str) -> Transition:
    """The reserved stock leaves the warehouse: it leaves on-hand stock too."""
    return await _one(db, order_id, lambda book: book.move(order_id, "ship"))


async def restock(db: asyncpg.Connection, order_id: str) -> Transition:
    """Returned items go back on the shelf."""
    return await _one(db, order_id, lambda book: book.move(order_id, "return"))
