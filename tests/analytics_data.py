"""A generated event history for the analytics tests, and the plain-Python answers to every
analytics query over it (the reference the ClickHouse answers must equal, to the cent)."""

import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from contracts.analytics import AddedToCart, CheckoutStarted, ProductViewed
from contracts.events import (
    Event,
    InventoryAdjusted,
    InventoryLow,
    InventoryReserved,
    OrderCancelled,
    OrderCreated,
    OrderDelivered,
    OrderItem,
    OrderReturned,
    OrderShipped,
    OrderValidated,
    PaymentProcessed,
    ProductCreated,
    StockItem,
    UserLoggedIn,
    UserRegistered,
)

CENT, RATE = Decimal("0.01"), Decimal("0.0001")


def ratio(part, whole, unit=RATE) -> Decimal:
    return (Decimal(part) / Decimal(whole)).quantize(unit, ROUND_HALF_EVEN) if whole else Decimal(0)


def ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@dataclass
class History:
    start: datetime  # the query window is [start, end)
    end: datetime
    events: list[Event] = field(default_factory=list)

    def wire(self) -> dict:
        return {"from": iso(self.start), "to": iso(self.end)}

    def inside(self, e: Event, start: datetime | None = None, end: datetime | None = None) -> bool:
        return (start or self.start) <= e.timestamp < (end or self.end)

    def of(self, *kinds: type[Event]) -> list:
        return [e for e in self.events if isinstance(e, kinds)]


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate(tag: str, start: datetime, *, orders: int, seed: int = 5) -> History:
    """Orders with validations, payments, cancels (before and after payment, with refunds),
    shipments, deliveries and partial returns; stock events; sign-ups, log-ins; shoppers'
    behaviour. Events spread from a day before the window to a day after it."""
    rnd = random.Random(seed)
    history = History(start, start + timedelta(days=2))
    add = history.events.append

    def at(base: datetime, **delta: float) -> datetime:
        return ms(base + timedelta(**delta))

    def anywhen() -> datetime:
        return at(start, seconds=rnd.uniform(-86_400, 3 * 86_400))

    products = [f"p-{tag}-{i:03d}" for i in range(40)]
    customers = [f"c-{tag}-{i:03d}" for i in range(300)]
    for product in products:
        add(ProductCreated(product_id=product, sku=product, name=product, category="tea",
                           price=Decimal("9.99"), active=True, on_hand=rnd.randint(20, 300),
                           timestamp=at(start, days=-1, seconds=-rnd.randint(1, 3_600))))
    for _ in range(300):
        delta = rnd.choice([-1, 1]) * rnd.randint(1, 40)
        level = rnd.randint(0, 300)
        add(InventoryAdjusted(product_id=rnd.choice(products), delta=delta, reason="count",
                              on_hand=level, available=max(level - rnd.randint(0, 9), 0),
                              timestamp=anywhen()))
    for _ in range(40):
        add(InventoryLow(product_id=rnd.choice(products), available=rnd.randint(0, 9),
                         threshold=10, timestamp=anywhen()))
    for customer in customers[:200]:
        add(UserRegistered(user_id=customer, email=f"{customer}@example.com", role="customer",
                           timestamp=anywhen()))
    for _ in range(300):
        add(UserLoggedIn(user_id=rnd.choice(customers), timestamp=anywhen()))
    shoppers = customers[:150] + [f"anon-{tag}-{i}" for i in range(250)]
    for shopper in shoppers:
        who = ({"user_id": shopper} if shopper.startswith("c-") else {"anonymous_id": shopper})
        when = anywhen()
        product = rnd.choice(products)
        add(ProductViewed(product_id=product, timestamp=when, **who))
        if rnd.random() < 0.6:
            add(AddedToCart(product_id=product, quantity=rnd.randint(1, 3),
                            timestamp=at(when, seconds=30), **who))
            if rnd.random() < 0.5:
                add(CheckoutStarted(item_count=1, timestamp=at(when, seconds=90), **who))
        elif rnd.random() < 0.2:  # checks out without an add the funnel saw: not counted on
            add(CheckoutStarted(item_count=1, timestamp=at(when, seconds=90), **who))
    for n in range(orders):
        _order(rnd, add, f"o-{tag}-{n:05d}", rnd.choice(customers), products, anywhen())
    return history


def _order(rnd, add, order_id, customer, products, created) -> None:
    def later(hours: float) -> datetime:
        return ms(created + timedelta(hours=hours, milliseconds=rnd.randint(1, 999)))

    # An order names each product once (orders.CreateOrder refuses repeats).
    lines = [OrderItem(product_id=product, quantity=rnd.randint(1, 5),
                       price=Decimal(rnd.randint(99, 25_000)) / 100)
             for product in rnd.sample(products, rnd.randint(1, 4))]
    total = sum((line.price * line.quantity for line in lines), Decimal(0))
    add(OrderCreated(order_id=order_id, customer_id=customer, items=lines, total_price=total,
                     timestamp=ms(created)))
    if rnd.random() < 0.08:
        add(OrderValidated(order_id=order_id, is_valid=False, validation_errors=["gone"],
                           timestamp=later(0.01)))
        add(OrderCancelled(order_id=order_id, cancellation_reason="invalid", timestamp=later(0.02)))
        return
    add(OrderValidated(order_id=order_id, is_valid=True, timestamp=later(0.01)))
    payment = f"pay-{order_id}"
    if rnd.random() < 0.07:
        add(PaymentProcessed(order_id=order_id, payment_id=payment, payment_status="FAILED",
                             amount=total, timestamp=later(0.02)))
        add(OrderCancelled(order_id=order_id, cancellation_reason="declined",
                           timestamp=later(0.03)))
        return
    add(PaymentProcessed(order_id=order_id, payment_id=payment, payment_status="SUCCESS",
                         amount=total, timestamp=later(0.02)))
    add(InventoryReserved(order_id=order_id, timestamp=later(0.03), items=[
        StockItem(product_id=line.product_id, quantity=line.quantity) for line in lines]))
    if rnd.random() < 0.1:  # cancelled after payment: refunded
        add(OrderCancelled(order_id=order_id, cancellation_reason="changed mind",
                           timestamp=later(1)))
        add(PaymentProcessed(order_id=order_id, payment_id=payment, payment_status="REFUNDED",
                             amount=total, timestamp=later(1.1)))
        return
    if rnd.random() < 0.85:
        add(OrderShipped(order_id=order_id, shipment_id=f"s-{order_id}", carrier="post",
                         tracking_number="T1", timestamp=later(5)))
        if rnd.random() < 0.9:
            add(OrderDelivered(order_id=order_id, delivery_status="delivered",
                               timestamp=later(20)))
            if rnd.random() < 0.15:
                refund = (total * Decimal(rnd.randint(10, 100)) / 100).quantize(CENT)
                add(OrderReturned(order_id=order_id, return_reason="too big",
                                  refund_amount=refund, timestamp=later(30)))
                add(PaymentProcessed(order_id=order_id, payment_id=payment,
                                     payment_status="REFUNDED", amount=refund,
                                     timestamp=later(31)))


def wire_messages(history: History, rnd: random.Random) -> list[tuple[str, bytes, str]]:
    """(subject, body, Nats-Msg-Id): shuffled, with 5% of the events sent twice under a
    different message id, so JetStream keeps both copies and only the eventId can tell."""
    messages = [(e.subject, e.model_dump_json().encode(), e.event_id) for e in history.events]
    messages += [(s, body, f"again-{msg_id}") for s, body, msg_id in messages
                 if rnd.random() < 0.05]
    rnd.shuffle(messages)
    return messages


# --- the reference answers ------------------------------------------------------------------

def summary(h: History) -> dict:
    created = [e for e in h.of(OrderCreated) if h.inside(e)]
    orders = len({e.order_id for e in created})
    revenue = sum((e.total_price for e in created), Decimal(0))
    refunds = sum((e.amount for e in h.of(PaymentProcessed)
                   if h.inside(e) and e.payment_status == "REFUNDED"), Decimal(0))
    cancelled = len({e.order_id for e in h.of(OrderCancelled) if h.inside(e)})
    returned = len({e.order_id for e in h.of(OrderReturned) if h.inside(e)})
    return {"orders": orders, "revenue": revenue, "averageOrderValue": ratio(revenue, orders, CENT),
            "units": sum(sum(i.quantity for i in e.items) for e in created),
            "cancelled": cancelled, "returned": returned, "refunds": refunds,
            "netRevenue": revenue - refunds, "cancelRate": ratio(cancelled, orders),
            "returnRate": ratio(returned, orders)}


def timeseries(h: History, metric: str, step: int) -> list[tuple[str, Decimal]]:
    first = int(h.start.timestamp()) // step * step
    last = int(h.end.timestamp() - 0.001) // step * step
    buckets: dict[int, Decimal | set] = {}
    lo, hi = datetime.fromtimestamp(first, UTC), datetime.fromtimestamp(last + step, UTC)
    for e in h.events:
        if not lo <= e.timestamp < hi:
            continue
        b = int(e.timestamp.timestamp()) // step * step
        if metric == "active_users":
            if who := getattr(e, "customer_id", None) or getattr(e, "user_id", None):
                buckets.setdefault(b, set()).add(who)
        elif isinstance(e, OrderCreated):
            value = {"revenue": e.total_price, "orders": 1,
                     "units": sum(i.quantity for i in e.items)}[metric]
            buckets[b] = buckets.get(b, Decimal(0)) + value
    return [(iso(datetime.fromtimestamp(b, UTC)),
             Decimal(len(v)) if isinstance(v, set) else Decimal(v))
            for b in range(first, last + 1, step) for v in [buckets.get(b, Decimal(0))]]


def top_products(h: History, by: str, limit: int) -> list[dict]:
    figures: dict[str, dict] = defaultdict(lambda: {"revenue": Decimal(0), "units": 0,
                                                    "orders": set()})
    for e in h.of(OrderCreated):
        if h.inside(e):
            for item in e.items:
                f = figures[item.product_id]
                f["revenue"] += item.price * item.quantity
                f["units"] += item.quantity
                f["orders"].add(e.order_id)
    other = "units" if by == "revenue" else "revenue"
    ranked = sorted(figures.items(), key=lambda kv: (-kv[1][by], -kv[1][other], kv[0]))
    return [{"productId": p, "revenue": f["revenue"], "units": f["units"],
             "orders": len(f["orders"])} for p, f in ranked[:limit]]


def funnel(h: History) -> dict:
    cohort = {e.order_id for e in h.of(OrderCreated) if h.inside(e)}
    reached: dict[str, set] = defaultdict(set)
    for e in h.events:
        order = getattr(e, "order_id", None)
        if order not in cohort:
            continue
        if isinstance(e, OrderValidated) and e.is_valid:
            reached["validated"].add(order)
        elif isinstance(e, PaymentProcessed) and e.payment_status == "SUCCESS":
            reached["paid"].add(order)
        elif isinstance(e, InventoryReserved | OrderShipped | OrderDelivered):
            reached[{InventoryReserved: "reserved", OrderShipped: "shipped",
                     OrderDelivered: "delivered"}[type(e)]].add(order)
    orders = _chain(cohort, reached, ["created", "validated", "paid", "reserved", "shipped",
                                      "delivered"])
    did: dict[str, set] = defaultdict(set)
    for e in h.events:
        if not h.inside(e):
            continue
        who = getattr(e, "customer_id", None) or getattr(e, "user_id", None) or getattr(
            e, "anonymous_id", None)
        kind = {ProductViewed: "viewed", AddedToCart: "added_to_cart",
                CheckoutStarted: "checkout", OrderCreated: "purchased"}.get(type(e))
        if kind and who:
            did[kind].add(who)
    shoppers = _chain(did["viewed"], did, ["viewed", "added_to_cart", "checkout", "purchased"])
    return {"orders": orders, "shoppers": shoppers}


def _chain(first: set, reached: dict[str, set], names: list[str]) -> list[dict]:
    steps, alive, previous = [], set(first), None
    for i, name in enumerate(names):
        if i:
            alive &= reached[name]
        steps.append({"step": name, "count": len(alive),
                      "conversion": ratio(len(alive), previous) if i else Decimal(1)})
        previous = len(alive)
    return steps


def inventory(h: History, threshold: int, limit: int) -> dict:
    levels: dict[str, dict] = defaultdict(lambda: {"on_hand": None, "available": None})
    moves: dict[str, dict] = defaultdict(lambda: {"unitsIn": 0, "unitsOut": 0,
                                                  "unitsReserved": 0})
    key = {}
    for e in sorted(h.of(ProductCreated, InventoryAdjusted, InventoryLow),
                    key=lambda e: (e.timestamp, e.event_id)):
        if e.timestamp >= h.end:
            continue
        level = levels[e.product_id]
        if not isinstance(e, InventoryLow):
            level["on_hand"] = e.on_hand
        level["available"] = e.on_hand if isinstance(e, ProductCreated) else e.available
        key[e.product_id] = True
        if isinstance(e, InventoryAdjusted) and h.inside(e):
            moves[e.product_id]["unitsIn" if e.delta > 0 else "unitsOut"] += abs(e.delta)
    for e in h.of(InventoryReserved):
        if h.inside(e):
            for item in e.items:
                moves[item.product_id]["unitsReserved"] += item.quantity
    products = sorted(set(levels) | set(moves))
    rows = [{"productId": p, "onHand": levels[p]["on_hand"], "available": levels[p]["available"],
             **moves[p]} for p in products]
    low = sorted((r for r in rows if r["available"] is not None and r["available"] <= threshold),
                 key=lambda r: (r["available"], r["productId"]))
    alerts = sum(1 for e in h.of(InventoryLow) if h.inside(e))
    return {"products": rows[:limit], "lowStock": low[:limit], "lowStockAlerts": alerts}


def users(h: History) -> dict:
    active = {who for e in h.events if h.inside(e)
              for who in [getattr(e, "customer_id", None) or getattr(e, "user_id", None)] if who}
    registered = {e.user_id for e in h.of(UserRegistered) if h.inside(e)}
    first: dict[str, datetime] = {}
    for e in h.of(OrderCreated):
        if e.timestamp < h.end:
            first[e.customer_id] = min(first.get(e.customer_id, e.timestamp), e.timestamp)
    customers = {e.customer_id for e in h.of(OrderCreated) if h.inside(e)}
    new = {c for c in customers if first[c] >= h.start}
    return {"activeUsers": len(active), "newRegistrations": len(registered),
            "customers": len(customers), "newCustomers": len(new),
            "returningCustomers": len(customers) - len(new), "approximate": False}


def exact(value):
    """A reply's JSON numbers as exact decimals, for comparison with the reference."""
    return json.loads(json.dumps(value), parse_float=Decimal)
