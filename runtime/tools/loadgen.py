"""`atlantic loadgen`: simulated shoppers and an operator against a running Atlantic, then an audit.

Shoppers browse, search, view (with analytics behaviour events), fill a cart and check out the
way a careful client does (one Idempotency-Key, retried until an answer). Each order gets a plan
when it is placed: kept (shipped and delivered), cancelled by the shopper, or returned after
delivery. The operator, signed in as the admin, ships and delivers the RESERVED orders meant to
be kept or returned. The audit then checks what a team adopting Atlantic asks: every order ended
where its plan says (nothing lost, doubled or stuck), and analytics agrees with PostgreSQL.

The loadgen works on products and accounts of its own (a category per run), so it can run
beside other traffic; the analytics comparison assumes it is the only thing placing orders
during its window.
"""

import asyncio
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import nats
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contracts.base import new_id
from runtime import accounts
from runtime.tools.client import AtlanticClient, Reply, until_answered

PASSWORD = "loadgen-shopper-pass"
CARRIERS = ("UPS", "DHL", "PostNL")
NOUNS = ("kettle", "teapot", "grinder", "mug", "lamp", "blanket", "notebook", "backpack")
# What a shopper does next, by weight; a visit ends at check-out or when the shopper leaves.
ACTIONS = {"browse": 3, "search": 2, "view": 6, "add_to_cart": 3, "checkout": 2, "leave": 1}
# What becomes of an order, by weight.
FATES = {"DELIVERED": 80, "CANCELLED": 10, "RETURNED": 10}
FINAL = {"DELIVERED", "CANCELLED", "RETURNED"}
ATTEMPT_SECONDS = 5.0  # a request lost with a server is repeated after this


@dataclass
class LoadConfig:
    nats_url: str
    admin_email: str
    admin_password: str
    rate: float | None = None  # shopper visits started per second (open loop)...
    concurrency: int = 16  # ...or this many shoppers, each starting a visit when one ends
    duration: float | None = 60.0  # stop placing orders after this many seconds...
    orders: int | None = None  # ...or after this many orders, whichever comes first
    seed: int = 1
    shoppers: int = 32  # accounts (registration is argon2-expensive, so they are reused)
    products: int = 24
    settle_seconds: float = 60.0  # how long the audit waits for orders and analytics


@dataclass
class Order:
    order_id: str
    client: AtlanticClient
    expected: str  # the final status its plan leads to
    total: Decimal
    status: str = "CREATED"
    shipped: bool = False


class Latencies:
    """Every request's latency (for the summary) and the recent ones (for the live figures)."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[float]] = {}
        self.errors: Counter[str] = Counter()
        self.recent: deque[float] = deque(maxlen=5_000)

    def add(self, kind: str, seconds: float, ok: bool) -> None:
        self.by_kind.setdefault(kind, []).append(seconds)
        self.recent.append(seconds)
        if not ok:
            self.errors[kind] += 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Report:
    orders: dict[str, Order]
    elapsed: float  # seconds spent placing orders
    latencies: Latencies
    problems: list[str] = field(default_factory=list)
    analytics: dict | None = None

    @property
    def passed(self) -> bool:
        return not self.problems and bool(self.orders)


class LoadGen:
    def __init__(self, config: LoadConfig, nc: nats.NATS):
        self.cfg, self.nc = config, nc
        self.rnd = random.Random(config.seed)
        self.run_id = new_id()[:8]
        self.client = AtlanticClient(nc, timeout=10.0)
        self.admin: AtlanticClient | None = None
        self.shoppers: list[AtlanticClient] = []
        self.products: list[dict] = []
        self.orders: dict[str, Order] = {}
        self.lat = Latencies()
        self.checkouts = 0  # started, so --orders is never overshot
        self.started = time.monotonic()
        self.stopping = asyncio.Event()
        self.t0 = datetime.now(UTC)
        self._tasks: set[asyncio.Task] = set()

    # --- requests -------------------------------------------------------------------------

    async def call(self, kind: str, client: AtlanticClient, subject: str, payload: object,
                   headers: dict[str, str] | None = None) -> Reply | None:
        """One request, timed; None when no answer came (counted as an error)."""
        began = time.perf_counter()
        try:
            reply = await client.call(subject, payload, headers=headers)
        except Exception:
            self.lat.add(kind, time.perf_counter() - began, False)
            return None
        self.lat.add(kind, time.perf_counter() - began, reply.ok)
        return reply

    async def call_safely(self, kind: str, client: AtlanticClient, subject: str, payload: object,
                          headers: dict[str, str] | None = None) -> Reply | None:
        """A request that is safe to repeat (a read, a track with its client event ids, an order
        with its Idempotency-Key, a status change the order's state machine does once), repeated
        on no answer or a 5xx (a server restarting, a stream leader being elected) until a final
        reply, as a careful client does. Timed and counted as one request: an error is what the
        client is finally left with (a 4xx, or nothing within a minute)."""
        began = time.perf_counter()
        reply = await until_answered(lambda: client.call_or_none(
            subject, payload, headers=headers, timeout=ATTEMPT_SECONDS), give_up_after=60)
        self.lat.add(kind, time.perf_counter() - began, reply is not None and reply.ok)
        return reply

    async def must(self, kind: str, client: AtlanticClient, subject: str, payload: object) -> dict:
        reply = await self.call(kind, client, subject, payload)
        if reply is None or not reply.ok:
            raise RuntimeError(f"{subject} failed: {reply.body if reply else 'no answer'}")
        return reply.body

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- set-up ---------------------------------------------------------------------------

    async def prepare(self) -> None:
        login = await self.must("login", self.client, "atlantic.users.login", {
            "email": self.cfg.admin_email, "password": self.cfg.admin_password})
        self.admin = self.client.signed_in(login["token"])
        gate = asyncio.Semaphore(4)  # argon2 hashing is the server's CPU; don't flood it

        async def product(n: int) -> dict:
            async with gate:
                return await self.must("setup", self.admin, "atlantic.catalog.products.create", {
                    "name": f"Loadgen {NOUNS[n % len(NOUNS)]} {n}", "category": self.category,
                    "price": f"{self.rnd.randint(300, 20_000) / 100:.2f}", "stock": 1_000_000})

        async def shopper(n: int) -> AtlanticClient:
            email = f"loadgen-{self.run_id}-{n}@example.com"
            async with gate:
                await self.must("setup", self.client, "atlantic.users.register",
                                {"email": email, "password": PASSWORD, "name": f"Shopper {n}"})
                session = await self.must("login", self.client, "atlantic.users.login",
                                          {"email": email, "password": PASSWORD})
            return self.client.signed_in(session["token"])

        self.products = await asyncio.gather(*(product(n) for n in range(self.cfg.products)))
        self.shoppers = await asyncio.gather(*(shopper(n) for n in range(self.cfg.shoppers)))
        self.t0 = datetime.now(UTC) - timedelta(milliseconds=10)
        self.started = time.monotonic()

    @property
    def category(self) -> str:
        return f"loadgen-{self.run_id}"

    # --- shoppers ---------------------------------------------------------------------------

    def done_placing(self) -> bool:
        cfg = self.cfg
        return (self.stopping.is_set()
                or (cfg.orders is not None and self.checkouts >= cfg.orders)
                or (cfg.duration is not None and time.monotonic() - self.started >= cfg.duration))

    async def visit(self) -> None:
        """One shopper's visit: weighted steps until check-out or leaving."""
        shopper = self.rnd.choice(self.shoppers)
        cart: dict[str, int] = {}
        for _ in range(30):
            action = self.rnd.choices(list(ACTIONS), list(ACTIONS.values()))[0]
            product = self.rnd.choice(self.products)
            if action == "browse":
                await self.call_safely("products.list", shopper, "atlantic.catalog.products.list",
                                       {"category": self.category, "limit": 20})
            elif action == "search":
                word = self.rnd.choice(NOUNS)
                found = await self.call_safely("products.list", shopper,
                                               "atlantic.catalog.products.list",
                                               {"q": word, "limit": 10})
                count = len(found.body["items"]) if found and found.ok else 0
                await self.track(shopper, {"type": "search", "query": word, "resultCount": count})
            elif action == "view":
                await self.call_safely("products.get", shopper, "atlantic.catalog.products.get",
                                       {"productId": product["productId"]})
                await self.track(shopper, {"type": "product_viewed",
                                           "productId": product["productId"]})
            elif action == "add_to_cart":
                quantity = self.rnd.randint(1, 3)
                cart[product["productId"]] = cart.get(product["productId"], 0) + quantity
                await self.track(shopper, {"type": "added_to_cart",
                                           "productId": product["productId"], "quantity": quantity})
            elif action == "checkout" and cart:
                await self.checkout(shopper, cart)
                return
            elif action == "leave":
                return

    async def track(self, shopper: AtlanticClient, event: dict) -> None:
        """A behaviour event with its own client event id, so a repeat is not counted twice."""
        await self.call_safely("track", shopper, "atlantic.analytics.track",
                               {"events": [event | {"clientEventId": new_id()}]})

    async def checkout(self, shopper: AtlanticClient, cart: dict[str, int]) -> None:
        if self.done_placing():
            return
        self.checkouts += 1
        await self.track(shopper, {"type": "checkout_started", "itemCount": sum(cart.values())})
        order = await self.place(shopper, [{"productId": p, "quantity": q}
                                           for p, q in cart.items()])
        if order is None:
            return
        fate = self.rnd.choices(list(FATES), list(FATES.values()))[0]
        tracked = Order(order["orderId"], shopper, fate, Decimal(str(order["totalPrice"])))
        self.orders[tracked.order_id] = tracked
        if fate == "CANCELLED":  # sometimes at once, sometimes once the saga has moved on
            await asyncio.sleep(self.rnd.choice((0, 0.05, 0.5)))
            await self.call("orders.cancel", shopper, "atlantic.orders.cancel",
                            {"orderId": tracked.order_id, "reason": "changed my mind"})

    async def place(self, shopper: AtlanticClient, items: list[dict]) -> dict | None:
        """orders.create with one Idempotency-Key, retried on no answer or a 5xx, so a retry
        can neither lose the order nor place it twice."""
        reply = await self.call_safely("orders.create", shopper, "atlantic.orders.create",
                                       {"items": items}, headers={"Idempotency-Key": new_id()})
        return reply.body if reply is not None and reply.ok else None

    async def shoppers_by_concurrency(self) -> None:
        async def shopper() -> None:
            while not self.done_placing():
                await self.visit()

        await asyncio.gather(*(shopper() for _ in range(self.cfg.concurrency)))

    async def shoppers_by_rate(self, rate: float) -> None:
        in_flight = asyncio.Semaphore(1_000)  # past this the system is not keeping up anyway

        async def one() -> None:
            try:
                await self.visit()
            finally:
                in_flight.release()

        while not self.done_placing():
            await in_flight.acquire()
            self.spawn(one())
            await asyncio.sleep(self.rnd.expovariate(rate))

    # --- the operator ------------------------------------------------------------------------

    async def reserved_orders(self) -> list[str]:
        """Our RESERVED orders, from orders.list as the admin (newest first, every page)."""
        found, cursor = [], None
        while True:
            query = {"status": "RESERVED", "from": self.t0.isoformat(), "limit": 100}
            reply = await self.call("orders.list", self.admin, "atlantic.orders.list",
                                    query | ({"cursor": cursor} if cursor else {}))
            if reply is None or not reply.ok:
                return found
            found += [o["orderId"] for o in reply.body["orders"] if o["orderId"] in self.orders]
            if not (cursor := reply.body.get("nextCursor")):
                return found

    async def operator(self) -> None:
        """Ships and delivers the orders meant to reach the customer; returns some of them."""
        gate = asyncio.Semaphore(16)

        # Each step is repeated on no answer or a 5xx (a server going away), as a careful
        # operator does: a step whose reply was lost would otherwise leave the order where it is
        # for good. Repeating one that did commit is refused with a 409 by the order's state
        # machine, and the audit reads the status the orders set holds.
        async def fulfil(order: Order) -> None:
            async with gate:
                shipped = await self.call_safely("orders.ship", self.admin,
                                                 "atlantic.orders.ship", {
                    "orderId": order.order_id, "carrier": self.rnd.choice(CARRIERS)})
                if shipped is None or not (shipped.ok or shipped.status == 409):
                    order.shipped = False  # try again on the next round
                    return
                await self.call_safely("orders.deliver", self.admin, "atlantic.orders.deliver",
                                       {"orderId": order.order_id})
            if order.expected == "RETURNED":
                await self.call_safely("orders.return", order.client, "atlantic.orders.return",
                                       {"orderId": order.order_id, "reason": "does not fit"})

        while True:
            for order_id in await self.reserved_orders():
                order = self.orders[order_id]
                if order.expected != "CANCELLED" and not order.shipped:
                    order.shipped = True
                    self.spawn(fulfil(order))
            await asyncio.sleep(0.2)

    # --- the audit -------------------------------------------------------------------------

    async def statuses(self) -> dict[str, str]:
        """Status and customer of every order placed in our window, from PostgreSQL."""
        found, cursor = {}, None
        while True:
            query = {"from": self.t0.isoformat(), "limit": 100}
            reply = await self.call("orders.list", self.admin, "atlantic.orders.list",
                                    query | ({"cursor": cursor} if cursor else {}))
            if reply is None or not reply.ok:
                raise RuntimeError("orders.list failed during the audit")
            found |= {o["orderId"]: (o["status"], o["customerId"]) for o in reply.body["orders"]}
            if not (cursor := reply.body.get("nextCursor")):
                return found

    async def settle(self, deadline: float) -> list[str]:
        """Waits until every order is final; the problems left at the deadline."""
        while True:
            listed = await self.statuses()
            for order_id, order in self.orders.items():
                if order_id in listed:
                    order.status = listed[order_id][0]
            problems = [f"order {o.order_id} is {o.status}, expected {o.expected}"
                        for o in self.orders.values() if o.status != o.expected]
            if not problems or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        missing = [o for o in self.orders if o not in listed]
        problems += [f"order {o} was acknowledged but PostgreSQL does not list it"
                     for o in missing]
        customers = {listed[o][1] for o in self.orders if o in listed}
        strays = [o for o, (_, c) in listed.items() if c in customers and o not in self.orders]
        problems += [f"order {o} exists but no checkout was acknowledged with it (a double?)"
                     for o in strays]
        return problems

    def expected_summary(self) -> dict:
        by_status = Counter(o.status for o in self.orders.values())
        return {"orders": len(self.orders), "revenue": sum(o.total for o in self.orders.values()),
                "cancelled": by_status["CANCELLED"], "returned": by_status["RETURNED"]}

    async def analytics_agree(self, deadline: float) -> tuple[dict | None, list[str]]:
        """Polls analytics.summary over our window until it matches, or the deadline."""
        want = self.expected_summary()
        got: dict | None = None
        while True:
            window = {"from": self.t0.isoformat(),
                      "to": (datetime.now(UTC) + timedelta(seconds=1)).isoformat()}
            reply = await self.call("analytics.summary", self.admin, "atlantic.analytics.summary",
                                    window)
            if reply is not None and reply.ok:
                body = reply.body
                got = {"orders": body["orders"], "revenue": Decimal(str(body["revenue"])),
                       "cancelled": body["cancelled"], "returned": body["returned"]}
                if got == want:
                    return got, []
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        if got is None:
            return None, ["analytics.summary never answered"]
        return got, [f"analytics {k} = {got[k]}, PostgreSQL says {want[k]}"
                     for k in want if got[k] != want[k]]

    async def run(self, progress: Progress | None = None) -> Report:
        await self.prepare()
        operator = asyncio.create_task(self.operator())
        ticker = asyncio.create_task(self.tick(progress)) if progress else None
        try:
            if self.cfg.rate:
                await self.shoppers_by_rate(self.cfg.rate)
            else:
                await self.shoppers_by_concurrency()
            elapsed = time.monotonic() - self.started
            # Visits and cancellations still under way (rate mode); the operator keeps going.
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            deadline = time.monotonic() + self.cfg.settle_seconds
            problems = await self.settle(deadline)
        finally:
            operator.cancel()
            if ticker:
                ticker.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        got, disagreements = await self.analytics_agree(
            max(deadline, time.monotonic() + 10))
        return Report(self.orders, elapsed, self.lat, problems + disagreements, got)

    async def tick(self, progress: Progress) -> None:
        total = self.cfg.orders or self.cfg.duration or 1
        task = progress.add_task("placing orders", total=total, figures="")
        marks: deque[tuple[float, int]] = deque(maxlen=10)
        while True:
            now, placed = time.monotonic(), len(self.orders)
            marks.append((now, placed))
            rate = (placed - marks[0][1]) / (now - marks[0][0]) if now > marks[0][0] else 0.0
            recent = list(self.lat.recent)
            figures = (f"{placed} orders  {rate:6.1f} orders/s  "
                       f"p50 {percentile(recent, 0.5) * 1e3:5.1f} ms  "
                       f"p99 {percentile(recent, 0.99) * 1e3:6.1f} ms  "
                       f"errors {sum(self.lat.errors.values())}")
            done = placed if self.cfg.orders else min(now - self.started, total)
            progress.update(task, completed=done, figures=figures)
            await asyncio.sleep(0.5)


async def run_loadgen(config: LoadConfig, console: Console | None = None) -> Report:
    nc = await accounts.connect(config.nats_url, name="atlantic-loadgen", connect_timeout=5,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        gen = LoadGen(config, nc)
        if console is None:
            return await gen.run()
        columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[figures]}"))
        with Progress(*columns, console=console) as progress:
            return await gen.run(progress)
    finally:
        await nc.close()


def summary_table(report: Report) -> Table:
    table = Table("figure", "value", title="atlantic loadgen")
    statuses = Counter(o.status for o in report.orders.values())
    rate = len(report.orders) / report.elapsed if report.elapsed else 0.0
    table.add_row("orders placed", f"{len(report.orders)} in {report.elapsed:.1f} s "
                  f"({rate:.1f} orders/s)")
    table.add_row("final statuses", ", ".join(f"{s} {n}" for s, n in sorted(statuses.items())))
    for kind, values in sorted(report.latencies.by_kind.items()):
        table.add_row(kind, f"{len(values)} requests, p50 {percentile(values, .5) * 1e3:.1f} ms, "
                      f"p99 {percentile(values, .99) * 1e3:.1f} ms, "
                      f"{report.latencies.errors[kind]} errors")
    if report.analytics:
        table.add_row("analytics summary", ", ".join(f"{k} {v}" for k, v in
                                                     report.analytics.items()))
    verdict = "[green]passed[/]: every order reached its expected status; analytics agrees" \
        if report.passed else f"[red]FAILED[/]: {len(report.problems)} problem(s)"
    table.add_row("audit", verdict)
    return table

