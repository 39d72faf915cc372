"""What customers and admins ask of the orders set."""

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, get_args

from contracts.base import new_id
from contracts.catalog import Quote
from contracts.errors import BadRequest, Conflict, NotFound, Unavailable, Unprocessable
from contracts.events import (
    OrderCancelled,
    OrderCreated,
    OrderDelivered,
    OrderItem,
    OrderReturned,
    OrderShipped,
)
from contracts.orders import (
    CANCEL,
    CREATE,
    DELIVER,
    GET,
    IDEMPOTENCY_HEADER,
    LIST,
    MAX_IDEMPOTENCY_KEY,
    RETURN,
    SHIP,
    STATS,
    CancelOrder,
    CreateOrder,
    DeliverOrder,
    GetOrder,
    ListOrders,
    Order,
    OrderPage,
    OrderStats,
    OrderStatsReply,
    OrderStatus,
    OrderStatusReply,
    ReturnOrder,
    ShipmentReply,
    ShipOrder,
    StatusChange,
)
from handlers.deps import Admin, Context, CurrentUser, Db, NatsBroker, NatsMessage, Pool
from handlers.orders import (
    SCHEMA,
    Outbox,
    QuoteTimeout,
    metrics,
    orders,
    request_quote,
    visible_to,
)
from handlers.orders.lifecycle import CANCELLABLE
from storage import deadletters, outbox
from storage import orders as store

ReturnWindowDays = Annotated[float, Context("settings.return_window_days")]
DeadlineSeconds = Annotated[float, Context("settings.order_deadline_seconds")]


def _idempotency_key(msg: NatsMessage) -> str | None:
    key = (msg.headers or {}).get(IDEMPOTENCY_HEADER)
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise BadRequest(f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                         code="bad_idempotency_key")
    return key


def _quote_problems(quote: Quote) -> list[dict[str, str]]:
    """The quote's refusals as field errors a client can show next to each line."""
    problems = []
    for n, line in enumerate(quote.items):
        if line.problem == "insufficient_stock":
            problems.append({"field": f"items.{n}.quantity", "type": line.problem,
                             "message": f"only {line.available} available"})
        elif line.problem:
            problems.append({"field": f"items.{n}.productId", "type": line.problem,
                             "message": "no such product" if line.problem == "not_found"
                             else "not for sale"})
    return problems


async def _replay(db: Db | Pool, order_id: str, request_hash: str, wanted_hash: str) -> Order:
    if request_hash != wanted_hash:
        raise Conflict(f"this {IDEMPOTENCY_HEADER} was used for a different order",
                       code="idempotency_key_reused")
    return await store.view(db, order_id)


@orders.request(CREATE)
async def create_order(req: CreateOrder, user: CurrentUser, pool: Pool, msg: NatsMessage,
                       broker: NatsBroker, timeout: QuoteTimeout, events: Outbox) -> Order:
    """Places an order at the catalog's current prices; a retry with the same Idempotency-Key
    returns the first order instead of placing a second."""
    key = _idempotency_key(msg)
    request_hash = hashlib.sha256(req.model_dump_json().encode()).hexdigest() if key else ""

    async def first_order() -> Order | None:
        """The order placed under this key before, when this is a retry."""
        found = key and await store.find_key(pool, user.user_id, key)
        return await _replay(pool, *found, request_hash) if found else None

    # The quote first: a retry is rare, so the key is looked up only when it matters (the
    # statement that places the order claims the key, and names the first order on a clash),
    # which spares a first-time order a round trip to PostgreSQL.
    try:
        quote = await request_quote(broker, req.items, timeout)  # holding no connection
    except Unavailable:
        if replayed := await first_order():  # a retry needs no catalog
            return replayed
        raise
    if problems := _quote_problems(quote):
        if replayed := await first_order():  # placed while the items were still to be had
            return replayed
        raise Unprocessable("some items cannot be ordered", code="items_unavailable",
                            details=problems)

    items = [OrderItem(product_id=q.product_id, quantity=q.quantity, price=q.price)
             for q in quote.items]
    created = OrderCreated(order_id=new_id(), customer_id=user.user_id, items=items,
                           total_price=quote.total_price)
    async with pool.acquire() as db:
        placed = await store.place(db, created.order_id, user.user_id, items, quote.total_price,
                                   created, key=key, request_hash=request_hash)
        if placed.first:  # a retry, or a concurrent one with the same key, stored it first
            return await _replay(db, *placed.first, request_hash)
    await events.send(outbox.rows([created]))
    metrics.CREATED.inc()
    return Order(order_id=created.order_id, customer_id=user.user_id, status="CREATED",
                 items=items, total_price=quote.total_price, paid_amount=0, refunded_amount=0,
                 created_at=placed.created_at, updated_at=placed.created_at,
                 history=[StatusChange(status="CREATED", timestamp=placed.history_at)])


@orders.request(GET)
async def get_order(req: GetOrder, user: CurrentUser, db: Db) -> Order:
    """One order with its items, totals, shipment, refunds and full status history."""
    order = await store.view(db, req.order_id)
    if order is None:
        raise NotFound("order", req.order_id)
    visible_to(user, order.customer_id, req.order_id)
    return order


@orders.request(STATS)
async def order_stats(req: OrderStats, admin: Admin, db: Db,
                      deadline: DeadlineSeconds) -> OrderStatsReply:
    """How many orders stand in each status now, how many are past their deadline, and the
    events consumers gave up on (for the live dashboard)."""
    counts = await store.count_by_status(db)
    dead = await deadletters.count_by_consumer(db)
    return OrderStatsReply(
        by_status={status: counts.get(status, 0) for status in get_args(OrderStatus)},
        past_deadline=await store.count_overdue(db, deadline),
        dead_letters=[{"consumer": c, "count": n} for c, n in dead.items()])


@orders.request(LIST)
async def list_orders(req: ListOrders, user: CurrentUser, db: Db) -> OrderPage:
    """The caller's orders (an admin's: everyone's), newest first, a page at a time."""
    try:
        after = store.decode_cursor(req.cursor) if req.cursor else None
    except (ValueError, TypeError):
        raise Unprocessable("the cursor is not one this service issued", details=[
            {"field": "cursor", "message": "invalid cursor", "type": "value_error"}]) from None
    found, next_cursor = await store.page(
        db, customer_id=None if user.role == "admin" else user.user_id, status=req.status,
        created_from=req.created_from, created_to=req.created_to, after=after, limit=req.limit)
    return OrderPage(orders=found, next_cursor=next_cursor)


async def _locked(db: Db, order_id: str) -> store.OrderRow:
    order = await store.lock(db, order_id)
    if order is None:
        raise NotFound("order", order_id)
    return order


def _wrong_status(order: store.OrderRow, action: str, allowed: str) -> Conflict:
    return Conflict(f"the order is {order.status}; it can be {action} only when {allowed}",
                    code="invalid_status")


@orders.request(CANCEL)
async def cancel_order(req: CancelOrder, user: CurrentUser, db: Db) -> OrderStatusReply:
    """Cancels an order that has not shipped; payment and stock are given back by the saga."""
    async with db.transaction():
        order = await _locked(db, req.order_id)
        visible_to(user, order.customer_id, req.order_id)
        if order.status not in CANCELLABLE:
            raise _wrong_status(order, "cancelled", "not yet shipped")
        await store.set_status(db, order.order_id, "CANCELLED", req.reason,
                               cancellation_reason=req.reason)
        await outbox.add(db, SCHEMA, OrderCancelled(order_id=order.order_id,
                                                    cancellation_reason=req.reason))
    metrics.moved(order.status, "CANCELLED")
    return OrderStatusReply(order_id=order.order_id, status="CANCELLED")


@orders.request(SHIP)
async def ship_order(req: ShipOrder, _: Admin, db: Db) -> ShipmentReply:
    """Hands a reserved order to a carrier; the reply carries its tracking number."""
    shipment_id, tracking = new_id(), f"AT{secrets.randbelow(10**12):012d}"
    async with db.transaction():
        order = await _locked(db, req.order_id)
        if order.status != "RESERVED":
            raise _wrong_status(order, "shipped", "RESERVED")
        await store.set_status(db, order.order_id, "SHIPPED", req.carrier,
                               shipment_id=shipment_id, carrier=req.carrier,
                               tracking_number=tracking)
        await outbox.add(db, SCHEMA, OrderShipped(
            order_id=order.order_id, shipment_id=shipment_id, carrier=req.carrier,
            tracking_number=tracking))
    metrics.moved(order.status, "SHIPPED")
    return ShipmentReply(order_id=order.order_id, shipment_id=shipment_id, carrier=req.carrier,
                         tracking_number=tracking)


@orders.request(DELIVER)
async def deliver_order(req: DeliverOrder, _: Admin, db: Db) -> OrderStatusReply:
    """Records that the carrier delivered the order; the return window starts now."""
    async with db.transaction():
        order = await _locked(db, req.order_id)
        if order.status != "SHIPPED":
            raise _wrong_status(order, "delivered", "SHIPPED")
        await store.set_status(db, order.order_id, "DELIVERED", delivered_at=datetime.now(UTC))
        await outbox.add(db, SCHEMA, OrderDelivered(order_id=order.order_id,
                                                    delivery_status="DELIVERED"))
    metrics.moved(order.status, "DELIVERED")
    return OrderStatusReply(order_id=order.order_id, status="DELIVERED")


@orders.request(RETURN)
async def return_order(req: ReturnOrder, user: CurrentUser, db: Db,
                       window_days: ReturnWindowDays) -> OrderStatusReply:
    """Returns a delivered order within the return window; the payment is refunded."""
    async with db.transaction():
        order = await _locked(db, req.order_id)
        if user.user_id != order.customer_id:
            raise NotFound("order", req.order_id)
        if order.status != "DELIVERED":
            raise _wrong_status(order, "returned", "DELIVERED")
        if datetime.now(UTC) > order.delivered_at + timedelta(days=window_days):
            raise Conflict(f"the return window of {window_days:g} days has passed",
                           code="return_window_closed")
        refund = order.paid_amount - order.refunded_amount
        await store.set_status(db, order.order_id, "RETURNED", req.reason,
                               return_reason=req.reason)
        await outbox.add(db, SCHEMA, OrderReturned(
            order_id=order.order_id, return_reason=req.reason, refund_amount=refund))
    metrics.moved(order.status, "RETURNED")
    return OrderStatusReply(order_id=order.order_id, status="RETURNED")
