"""Queries on the catalog schema: products, stock, and the holds orders place on stock.

Every stock change locks the product rows it touches in product-id order (so two transactions
never wait on each other in a cycle), after locking the order's hold row when there is one.
The table's CHECK constraints are the last line: no figure can go below zero whatever the code.
"""

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

import asyncpg

from contracts.catalog import (
    CreateProduct,
    Inventory,
    ItemLine,
    ListProducts,
    Product,
    Quote,
    QuotedLine,
)
from contracts.errors import Conflict, Unprocessable
from storage.postgres import ConcurrentChange, Write

_PRODUCT = ("id AS product_id, sku, name, description, price, category, active,"
            " on_hand - held - reserved AS available, created_at, updated_at")
_INVENTORY = ("id AS product_id, on_hand, held, reserved, on_hand - held - reserved AS available,"
              " low_stock_threshold")

HoldState = Literal["rejected", "held", "reserved", "released", "expired", "failed", "shipped",
                    "returned", "cancelled"]


@dataclass(frozen=True, slots=True)
class LowStock:
    """A product whose available stock just fell below its threshold."""

    product_id: str
    available: int
    threshold: int


@dataclass(frozen=True, slots=True)
class StockChange:
    """What one change did to stock: the products touched, with their quantities."""

    lines: list[tuple[str, int]] = field(default_factory=list)
    low: list[LowStock] = field(default_factory=list)

    @property
    def product_ids(self) -> list[str]:
        return [product_id for product_id, _ in self.lines]


@dataclass(frozen=True, slots=True)
class Hold:
    state: HoldState
    lines: dict[str, int]


def _product(row: asyncpg.Record) -> Product:
    return Product.model_validate(dict(row))


# --- Products ---------------------------------------------------------------------------------

async def insert_product(db: asyncpg.Connection, product_id: str, req: CreateProduct) -> Product:
    """The new product; 409 when its SKU is taken."""
    sku = req.sku or f"SKU-{product_id[:12].upper()}"
    row = await db.fetchrow(
        "INSERT INTO catalog.products"
        " (id, sku, name, description, price, category, active, on_hand, low_stock_threshold)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        f" ON CONFLICT (sku) DO NOTHING RETURNING {_PRODUCT}",
        product_id, sku, req.name, req.description, req.price, req.category, req.active,
        req.stock, req.low_stock_threshold,
    )
    if row is None:
        raise Conflict(f"a product with SKU {sku!r} already exists", code="sku_taken")
    return _product(row)


async def product(db: asyncpg.Connection, product_id: str) -> Product | None:
    row = await db.fetchrow(f"SELECT {_PRODUCT} FROM catalog.products WHERE id = $1", product_id)
    return _product(row) if row else None


# Columns an update may change, by field name; the names are fixed here, the values are bound.
_UPDATABLE = {"name": "name", "description": "description", "price": "price",
              "category": "category", "sku": "sku", "active": "active",
              "low_stock_threshold": "low_stock_threshold"}


async def update_product(
    db: asyncpg.Connection, product_id: str, changes: dict[str, Any]
) -> Product | None:
    """The product after the change; None when it does not exist; 409 when the SKU is taken."""
    columns = sorted(changes)
    assignments = ", ".join(f"{_UPDATABLE[c]} = ${i}" for i, c in enumerate(columns, start=2))
    try:
        row = await db.fetchrow(
            f"UPDATE catalog.products SET {assignments}, updated_at = now()"
            f" WHERE id = $1 RETURNING {_PRODUCT}",
            product_id, *(changes[c] for c in columns),
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a product with SKU {changes['sku']!r} already exists",
                       code="sku_taken") from None
    return _product(row) if row else None


async def count_products(db: asyncpg.Connection) -> int:
    return await db.fetchval("SELECT count(*) FROM catalog.products")


def encode_cursor(item: Product) -> str:
    raw = json.dumps([item.name, item.product_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """The (name, id) a page starts after; 422 on the cursor field when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        name, product_id = json.loads(raw)
        if isinstance(name, str) and isinstance(product_id, str):
            return name, product_id
    except (binascii.Error, ValueError, TypeError):
        pass
    raise Unprocessable("invalid request fields: cursor", details=[
        {"field": "cursor", "message": "not a cursor this service issued", "type": "cursor"}])


async def list_products(db: asyncpg.Connection, req: ListProducts) -> tuple[list[Product], bool]:
    """One page of active products in (name, id) order, and whether more follow."""
    conditions, args = ["active"], []

    def bind(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if req.category is not None:
        conditions.append(f"category = {bind(req.category)}")
    if req.min_price is not None:
        conditions.append(f"price >= {bind(req.min_price)}")
    if req.max_price is not None:
        conditions.append(f"price <= {bind(req.max_price)}")
    if req.q is not None:
        conditions.append(f"search @@ websearch_to_tsquery('english', {bind(req.q)})")
    if req.in_stock:
        conditions.append("on_hand - held - reserved > 0")
    if req.cursor is not None:
        name, product_id = decode_cursor(req.cursor)
        conditions.append(f"(name, id) > ({bind(name)}, {bind(product_id)})")
    rows = await db.fetch(
        f"SELECT {_PRODUCT} FROM catalog.products WHERE {' AND '.join(conditions)}"
        f" ORDER BY name, id LIMIT {bind(req.limit + 1)}",
        *args,
    )
    return [_product(r) for r in rows[:req.limit]], len(rows) > req.limit


# --- Stock ------------------------------------------------------------------------------------

async def inventory(db: asyncpg.Connection, product_id: str) -> Inventory | None:
    row = await db.fetchrow(f"SELECT {_INVENTORY} FROM catalog.products WHERE id = $1",
                            product_id)
    return Inventory.model_validate(dict(row)) if row else None


async def adjust_stock(
    db: asyncpg.Connection, product_id: str, delta: int, reason: str, adjusted_by: str
) -> tuple[Inventory, StockChange] | None:
    """Adds delta to on-hand stock; None when the product does not exist; 409 when the change
    would take on-hand below what orders hold and reserve. Call inside a transaction."""
    row = await db.fetchrow(
        "UPDATE catalog.products SET on_hand = on_hand + $2"
        " WHERE id = $1 AND on_hand + $2 >= held + reserved"
        f" RETURNING {_INVENTORY}",
        product_id, delta,
    )
    if row is None:
        if await inventory(db, product_id) is None:
            return None
        raise Conflict("stock cannot go below zero, nor below what orders hold and reserve",
                       code="insufficient_stock")
    await db.execute(
        "INSERT INTO catalog.adjustments (product_id, delta, reason, adjusted_by)"
        " VALUES ($1, $2, $3, $4)", product_id, delta, reason, adjusted_by)
    stock = Inventory.model_validate(dict(row))
    low = fell_below(product_id, stock.available, -delta, stock.low_stock_threshold)
    return stock, StockChange([(product_id, abs(delta))], low)


def fell_below(product_id: str, available: int, taken: int, threshold: int) -> list[LowStock]:
    if taken > 0 and available < threshold <= available + taken:
        return [LowStock(product_id, available, threshold)]
    return []


async def quote(db: asyncpg.Connection | asyncpg.Pool, lines: Sequence[ItemLine]) -> Quote:
    """Current prices and availability; each line says what, if anything, is wrong with it."""
    rows = await db.fetch(
        "SELECT id, name, price, active, on_hand - held - reserved AS available"
        " FROM catalog.products WHERE id = ANY($1::text[])",
        [line.product_id for line in lines],
    )
    found = {r["id"]: r for r in rows}
    quoted = [_quote_line(line, found.get(line.product_id)) for line in lines]
    total = sum((q.price * q.quantity for q in quoted if q.problem is None and q.price),
                Decimal("0.00"))
    return Quote(items=quoted, total_price=total, ok=all(q.problem is None for q in quoted))


def _quote_line(line: ItemLine, row: asyncpg.Record | None) -> QuotedLine:
    if row is None:
        return QuotedLine(product_id=line.product_id, quantity=line.quantity, problem="not_found")
    problem = None
    if not row["active"]:
        problem = "inactive"
    elif row["available"] < line.quantity:
        problem = "insufficient_stock"
    return QuotedLine(product_id=line.product_id, quantity=line.quantity, name=row["name"],
                      price=row["price"], available=max(row["available"], 0), problem=problem)


# --- Holds: the catalog's side of the order saga ------------------------------------------------

async def _lock_products(db: asyncpg.Connection, product_ids: Iterable[str]) -> dict[str, Any]:
    rows = await db.fetch(
        "SELECT id, active, on_hand - held - reserved AS available FROM catalog.products"
        " WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
        sorted(set(product_ids)),
    )
    return {r["id"]: r for r in rows}


async def _shift(db: asyncpg.Connection, order_id: str, *, on_hand: int = 0, held: int = 0,
                 reserved: int = 0) -> StockChange:
    """Moves each of the order's line quantities between the stock columns (+1, 0 or -1 each).
    The caller has locked the products."""
    rows = await db.fetch(
        "UPDATE catalog.products p SET on_hand = p.on_hand + $2 * l.quantity,"
        " held = p.held + $3 * l.quantity, reserved = p.reserved + $4 * l.quantity"
        " FROM catalog.hold_lines l WHERE l.order_id = $1 AND p.id = l.product_id"
        " RETURNING p.id, l.quantity, p.on_hand - p.held - p.reserved AS available,"
        " p.low_stock_threshold",
        order_id, on_hand, held, reserved,
    )
    taken = -(on_hand - held - reserved)  # how much available stock each unit of a line took
    low = [x for r in rows
           for x in fell_below(r["id"], r["available"], taken * r["quantity"],
                                r["low_stock_threshold"])]
    return StockChange(sorted((r["id"], r["quantity"]) for r in rows), low)


async def _lines(db: asyncpg.Connection, order_id: str) -> dict[str, int]:
    rows = await db.fetch("SELECT product_id, quantity FROM catalog.hold_lines"
                          " WHERE order_id = $1 ORDER BY product_id", order_id)
    return {r["product_id"]: r["quantity"] for r in rows}


@dataclass(slots=True)
class StockRow:
    """A locked product row's figures (the hold moves change them in memory)."""

    active: bool
    on_hand: int
    held: int
    reserved: int
    threshold: int

    @property
    def available(self) -> int:
        return self.on_hand - self.held - self.reserved


@dataclass(slots=True)
class HoldRow:
    state: HoldState
    expired: bool
    lines: dict[str, int]
    expires_in: float = 0.0  # for a hold not yet stored: seconds from now


async def lock_holds(db: asyncpg.Connection, order_ids: Iterable[str],
                     product_ids: Iterable[str] = ()
                     ) -> tuple[dict[str, HoldRow], dict[str, StockRow]]:
    """The orders' holds and every product they or `product_ids` name, locked for the
    transaction: holds first, then products, each in id order, as the sweeper and stock
    adjustments take them, so two transactions never wait on each other in a cycle."""
    row = await db.fetchrow(
        "WITH held AS (SELECT order_id, state, expires_at <= now() AS expired"
        "  FROM catalog.holds WHERE order_id = ANY($1::text[]) ORDER BY order_id FOR UPDATE),"
        " lines AS (SELECT order_id, product_id, quantity FROM catalog.hold_lines"
        "  WHERE order_id IN (SELECT order_id FROM held)),"
        " stock AS (SELECT id, active, on_hand, held, reserved, low_stock_threshold"
        "  FROM catalog.products WHERE id IN (SELECT product_id FROM lines"
        "   UNION SELECT unnest($2::text[])) ORDER BY id FOR UPDATE)"
        # Evaluated left to right: the holds are locked before the products.
        " SELECT (SELECT coalesce(array_agg(held), '{}') FROM held) AS holds,"
        "  (SELECT coalesce(array_agg(lines), '{}') FROM lines) AS lines,"
        "  (SELECT coalesce(array_agg(stock), '{}') FROM stock) AS stock",
        sorted(set(order_ids)), sorted(set(product_ids)))
    holds = {order_id: HoldRow(state, expired, {}) for order_id, state, expired in row["holds"]}
    for order_id, product_id, quantity in row["lines"]:
        holds[order_id].lines[product_id] = quantity
    stock = {product_id: StockRow(*figures) for product_id, *figures in row["stock"]}
    return holds, stock


def hold_changes(new: dict[str, HoldRow], changed: dict[str, HoldState],
                 moved: dict[str, list[int]]) -> Write:
    """New holds with their lines, the states that changed, and the stock moved (per product:
    on_hand, held and reserved deltas), in one statement."""
    lines = [(o, p, q) for o, hold in new.items() for p, q in hold.lines.items()]

    def check(inserted: int) -> None:
        if inserted != len(new):
            raise ConcurrentChange(f"{len(new) - inserted} holds were created meanwhile")

    return Write(
        "added AS (INSERT INTO catalog.holds (order_id, state, expires_at)"
        "  SELECT o, s, now() + make_interval(secs => e)"
        "  FROM unnest($1::text[], $2::text[], $3::float8[]) AS n(o, s, e)"
        "  ON CONFLICT DO NOTHING RETURNING 1),"
        " lines AS (INSERT INTO catalog.hold_lines (order_id, product_id, quantity)"
        "  SELECT * FROM unnest($4::text[], $5::text[], $6::int[])),"
        " states AS (UPDATE catalog.holds h SET state = u.state, updated_at = now()"
        "  FROM unnest($7::text[], $8::text[]) AS u(order_id, state)"
        "  WHERE h.order_id = u.order_id),"
        " stock AS (UPDATE catalog.products p SET on_hand = p.on_hand + m.on_hand,"
        "  held = p.held + m.held, reserved = p.reserved + m.reserved"
        "  FROM unnest($9::text[], $10::int[], $11::int[], $12::int[])"
        "   AS m(id, on_hand, held, reserved) WHERE p.id = m.id)",
        "(SELECT count(*) FROM added)",
        (list(new), [h.state for h in new.values()], [h.expires_in for h in new.values()],
         [o for o, _, _ in lines], [p for _, p, _ in lines], [q for _, _, q in lines],
         list(changed), list(changed.values()),
         list(moved), *([m[i] for m in moved.values()] for i in range(3))),
        check)


async def release_expired(db: asyncpg.Connection, *, limit: int) -> list[str]:
    """Releases up to `limit` holds past their expiry; returns the products touched.
    Replicas share the work: each skips holds another is releasing. Call inside a transaction."""
    orders = await db.fetch(
        "SELECT order_id FROM catalog.holds WHERE state = 'held' AND expires_at <= now()"
        " ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED", limit)
    order_ids = [r["order_id"] for r in orders]
    if not order_ids:
        return []
    product_ids = await db.fetch(
        "SELECT DISTINCT product_id FROM catalog.hold_lines WHERE order_id = ANY($1::text[])",
        order_ids)
    await _lock_products(db, [r["product_id"] for r in product_ids])
    touched: set[str] = set()
    for order_id in order_ids:
        touched.update((await _shift(db, order_id, held=-1)).product_ids)
    await db.execute("UPDATE catalog.holds SET state = 'expired', updated_at = now()"
                     " WHERE order_id = ANY($1::text[])", order_ids)
    return sorted(touched)


async def hold(db: asyncpg.Connection, order_id: str) -> Hold | None:
    """What the catalog holds for an order, for operators and tests."""
    state = await db.fetchval("SELECT state FROM catalog.holds WHERE order_id = $1", order_id)
    return Hold(state, await _lines(db, order_id)) if state else None
