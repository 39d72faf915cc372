"""Orders in PostgreSQL: rows, lines, status history, idempotency keys and ignored events."""

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import asyncpg

from contracts.events import Event, OrderItem
from contracts.orders import Order, OrderStatus, OrderSummary, Shipment, StatusChange
from storage import outbox
from storage.postgres import Write, assignments


@dataclass(frozen=True)
class OrderRow:
    order_id: str
    customer_id: str
    status: OrderStatus
    total_price: Decimal
    paid_amount: Decimal
    refunded_amount: Decimal
    delivered_at: datetime | None
    changed_at: datetime | None = None  # the order's last change (its status, mostly)


@dataclass(frozen=True)
class Placed:
    """A new order's timestamps, or, when its Idempotency-Key was taken, the first order's."""

    created_at: datetime | None = None
    history_at: datetime | None = None
    first: tuple[str, str] | None = None  # (order_id, request_hash) stored under the key


async def place(db: asyncpg.Connection, order_id: str, customer_id: str,
                items: list[OrderItem], total: Decimal, created: Event, *,
                key: str | None = None, request_hash: str = "") -> Placed:
    """The order, its lines, its first history row, its idempotency key and its OrderCreated
    outbox row, in one statement (the caller publishes the row once it returns). When another
    request stored the same key first, nothing is written and that request's order is named."""
    [queued] = outbox.rows([created])
    row = await db.fetchrow(
        "WITH claimed AS (INSERT INTO orders.idempotency_keys"
        "  (customer_id, key, request_hash, order_id)"
        "  SELECT $2, $7, $8, $1 WHERE $7::text IS NOT NULL ON CONFLICT DO NOTHING RETURNING 1),"
        " go AS (SELECT WHERE $7::text IS NULL OR EXISTS (SELECT FROM claimed)),"
        " placed AS (INSERT INTO orders.orders (id, customer_id, status, total_price)"
        "  SELECT $1, $2, 'CREATED', $3 FROM go RETURNING created_at),"
        " lines AS (INSERT INTO orders.order_items (order_id, product_id, quantity, price)"
        "  SELECT $1, * FROM unnest($4::text[], $5::int[], $6::numeric[]) WHERE EXISTS"
        "  (SELECT FROM go)),"
        " history AS (INSERT INTO orders.history (order_id, status)"
        "  SELECT $1, 'CREATED' FROM go RETURNING at),"
        " queued AS (INSERT INTO orders.outbox (event_id, subject, payload, traceparent)"
        "  SELECT $9, $10, $11, $12 FROM go)"
        " SELECT (SELECT created_at FROM placed), (SELECT at FROM history)",
        order_id, customer_id, total, [i.product_id for i in items],
        [i.quantity for i in items], [i.price for i in items], key, request_hash,
        queued.event_id, queued.subject, queued.payload, queued.traceparent)
    if row["created_at"] is not None:
        return Placed(row["created_at"], row["at"])
    return Placed(first=await find_key(db, customer_id, key))


async def find_key(db: asyncpg.Connection | asyncpg.Pool, customer_id: str,
                   key: str) -> tuple[str, str] | None:
    row = await db.fetchrow(
        "SELECT order_id, request_hash FROM orders.idempotency_keys"
        " WHERE customer_id = $1 AND key = $2", customer_id, key)
    return (row["order_id"], row["request_hash"]) if row else None


_ROW = ("id, customer_id, status, total_price, paid_amount, refunded_amount, delivered_at,"
        " updated_at")


async def lock(db: asyncpg.Connection, order_id: str) -> OrderRow | None:
    """The order's row, locked until the transaction ends: one change at a time per order."""
    row = await db.fetchrow(f"SELECT {_ROW} FROM orders.orders WHERE id = $1 FOR UPDATE",
                            order_id)
    return OrderRow(*row.values()) if row else None


async def lock_many(db: asyncpg.Connection, order_ids: Iterable[str]) -> dict[str, OrderRow]:
    """The orders that exist among these, locked in id order (so two batches never deadlock)."""
    rows = await db.fetch(f"SELECT {_ROW} FROM orders.orders WHERE id = ANY($1::text[])"
                          " ORDER BY id FOR UPDATE", sorted(set(order_ids)))
    return {r["id"]: OrderRow(*r.values()) for r in rows}


@dataclass
class SagaChanges:
    """What a batch of saga events does to orders; `order_changes` writes it in one statement."""

    status: dict[str, OrderStatus] = field(default_factory=dict)  # where each order ends up
    paid: dict[str, Decimal] = field(default_factory=dict)  # what the provider charged
    refunded: dict[str, Decimal] = field(default_factory=dict)  # refunds to add
    cancellation_reason: dict[str, str | None] = field(default_factory=dict)
    history: list[tuple[str, OrderStatus, str | None]] = field(default_factory=list)
    ignored: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    def move(self, order_id: str, status: OrderStatus, note: str | None) -> None:
        self.status[order_id] = status
        self.history.append((order_id, status, note))

    def ignore(self, event_id: str, order_id: str, event: str, status_then: str,
               reason: str) -> None:
        self.ignored.append((event_id, order_id, event, status_then, reason))

    def refund(self, order_id: str, amount: Decimal) -> None:
        self.refunded[order_id] = self.refunded.get(order_id, Decimal(0)) + amount


def order_changes(changes: SagaChanges) -> Write:
    """Statuses, amounts, history rows (in the order they happened) and ignored events."""
    ids = sorted({*changes.status, *changes.paid, *changes.refunded})
    history = [list(c) for c in zip(*changes.history, strict=True)] or [[], [], []]
    ignored = [list(c) for c in zip(*changes.ignored, strict=True)] or [[], [], [], [], []]
    return Write(
        "moved AS ("
        "  UPDATE orders.orders o SET status = coalesce(u.status, o.status),"
        "   paid_amount = coalesce(u.paid, o.paid_amount),"
        "   refunded_amount = o.refunded_amount + coalesce(u.refunded, 0),"
        "   cancellation_reason = coalesce(u.reason, o.cancellation_reason), updated_at = now()"
        "  FROM unnest($1::text[], $2::text[], $3::numeric[], $4::numeric[], $5::text[])"
        "   AS u(id, status, paid, refunded, reason) WHERE o.id = u.id),"
        " history AS (INSERT INTO orders.history (order_id, status, note)"
        "  SELECT * FROM unnest($6::text[], $7::text[], $8::text[])),"
        " ignored AS (INSERT INTO orders.ignored_events"
        "  (event_id, order_id, event, status_then, reason)"
        "  SELECT * FROM unnest($9::text[], $10::text[], $11::text[], $12::text[], $13::text[])"
        "  ON CONFLICT DO NOTHING)",
        "1",
        (ids, [changes.status.get(i) for i in ids], [changes.paid.get(i) for i in ids],
         [changes.refunded.get(i) for i in ids],
         [changes.cancellation_reason.get(i) for i in ids], *history, *ignored))


_SETTABLE = {"paid_amount", "shipment_id", "carrier", "tracking_number", "cancellation_reason",
             "return_reason", "delivered_at"}


async def set_status(db: asyncpg.Connection, order_id: str, status: OrderStatus,
                     note: str | None = None, **columns: object) -> None:
    """Moves the order to `status`, sets the given columns, and appends to its history."""
    also = assignments(columns, _SETTABLE, first=3)
    await db.execute(
        f"UPDATE orders.orders SET status = $2, updated_at = now(){also} WHERE id = $1",
        order_id, status, *columns.values())
    await db.execute(
        "INSERT INTO orders.history (order_id, status, note) VALUES ($1, $2, $3)",
        order_id, status, note)


async def view(db: asyncpg.Connection | asyncpg.Pool, order_id: str) -> Order | None:
    """The order with its lines and history, in one statement (one round trip, one snapshot)."""
    row = await db.fetchrow(
        "SELECT o.*,"
        " ARRAY(SELECT (i.product_id, i.quantity, i.price) FROM orders.order_items i"
        "  WHERE i.order_id = o.id ORDER BY i.product_id) AS lines,"
        " ARRAY(SELECT (h.status, h.at, h.note) FROM orders.history h"
        "  WHERE h.order_id = o.id ORDER BY h.id) AS changes"
        " FROM orders.orders o WHERE o.id = $1", order_id)
    if row is None:
        return None
    shipment = None
    if row["shipment_id"]:
        shipment = Shipment(shipment_id=row["shipment_id"], carrier=row["carrier"],
                            tracking_number=row["tracking_number"])
    return Order(
        order_id=row["id"], customer_id=row["customer_id"], status=row["status"],
        items=[OrderItem(product_id=p, quantity=q, price=price) for p, q, price in row["lines"]],
        total_price=row["total_price"], paid_amount=row["paid_amount"],
        refunded_amount=row["refunded_amount"], shipment=shipment,
        cancellation_reason=row["cancellation_reason"], return_reason=row["return_reason"],
        created_at=row["created_at"], updated_at=row["updated_at"],
        history=[StatusChange(status=status, timestamp=at, note=note)
                 for status, at, note in row["changes"]])


def _encode_cursor(created_at: datetime, order_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), order_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for anything that is not a cursor this module made."""
    created_at, order_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    return datetime.fromisoformat(created_at), str(order_id)


async def page(db: asyncpg.Connection, *, customer_id: str | None, status: str | None,
               created_from: datetime | None, created_to: datetime | None,
               after: tuple[datetime, str] | None, limit: int,
               ) -> tuple[list[OrderSummary], str | None]:
    """Newest first; keyset on (created_at, id) so pages neither skip nor repeat an order."""
    rows = await db.fetch(
        "SELECT id, customer_id, status, total_price, created_at FROM orders.orders"
        " WHERE ($1::text IS NULL OR customer_id = $1) AND ($2::text IS NULL OR status = $2)"
        "   AND ($3::timestamptz IS NULL OR created_at >= $3)"
        "   AND ($4::timestamptz IS NULL OR created_at < $4)"
        "   AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6))"
        " ORDER BY created_at DESC, id DESC LIMIT $7",
        customer_id, status, created_from, created_to,
        after[0] if after else None, after[1] if after else None, limit + 1)
    orders = [OrderSummary(order_id=r["id"], customer_id=r["customer_id"], status=r["status"],
                           total_price=r["total_price"], created_at=r["created_at"])
              for r in rows[:limit]]
    more = len(rows) > limit
    return orders, _encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if more \
        else None


async def overdue(db: asyncpg.Connection, older_than_seconds: float, limit: int
                  ) -> dict[str, OrderStatus]:
    """Orders still waiting on the saga past their deadline, with their statuses, locked; other
    sweepers skip them."""
    rows = await db.fetch(
        "SELECT id, status FROM orders.orders WHERE status IN ('CREATED', 'VALIDATED', 'PAID')"
        " AND created_at < now() - make_interval(secs => $1)"
        " ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        older_than_seconds, limit)
    return {r["id"]: r["status"] for r in rows}


async def count_by_status(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT status, count(*) AS n FROM orders.orders GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def count_overdue(db: asyncpg.Connection, older_than_seconds: float) -> int:
    """Orders the deadline sweep would cancel: counted, not locked."""
    return await db.fetchval(
        "SELECT count(*) FROM orders.orders WHERE status IN ('CREATED', 'VALIDATED', 'PAID')"
        " AND created_at < now() - make_interval(secs => $1)", older_than_seconds)
