"""The order saga under `atlantic bench --only saga`, measured the way PERFORMANCE.md asks.

Orders are offered open loop at fixed rates: order i of a step is due at t0 + i/rate and is sent
as its own task then, so a slow reply never delays the next send, and it is timed from that
intended time to the moment the orders set applied RESERVED (its row in orders.history, found by
the order's Idempotency-Key: the same machine clock), so queueing is not hidden. Each step
reports the achieved rate, created→RESERVED p50/p99, the CPU each Atlantic process spent per
order (psutil, user + system of every thread, read before the step and after its backlog has
drained) and each durable consumer's deliveries per order (its own counter). CPU is also given
in raw nats-py echo round trips measured in the same world, and the idle CPU of the same
processes over a quiet interval as long as a step is reported beside it. A sweep stops after a
rate that clearly fails. A closed-loop figure is kept for peak throughput only: callers each
place an order, wait for it to be reserved, and place the next.
"""

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import asyncpg
import nats
import nats.errors
import psutil

from contracts.base import new_id
from contracts.events import STREAM
from runtime import accounts
from runtime.settings import Settings
from runtime.tools.bench.runner import (
    Row,
    _product,
    echo_cpu,
    miss,
    ms,
    peak_rss_mb,
    postgres_cpu,
)
from runtime.tools.bench.world import World, open_world
from runtime.tools.loadgen import percentile
from runtime.tools.otlp_sink import OtlpSink
from runtime.tools.services import free_port

SETS = ["users", "catalog", "orders", "payments", "analytics"]
ANALYTICS_ONCE = "analytics runs as ONE process: chDB owns its data directory exclusively"
# The name on the command line: (the name in the report, [(process, its handler sets)]).
TOPOLOGIES = {
    "one": ("one process", [("all sets", SETS)]),  # what `atlantic up` serves
    "per-set": ("process per set", [(s, [s]) for s in SETS]),
    "replicas": ("two replicas per set", [(f"{s} {n}", [s]) for s in SETS[:-1] for n in (1, 2)]
                 + [("analytics", ["analytics"])]),
    # "one" again, on a three-node NATS cluster with the stream on three replicas: the price
    # of replication (the nats-server column is then the first node's).
    "r3": ("one process, NATS cluster R3", [("all sets", SETS)]),
    # "one" as `atlantic up` runs it: NATS with the users of deploy/nats.conf, so the process
    # serves each set as an application of its own, with its own NATS user and connection.
    "up": ("one process, NATS users (atlantic up)", [("all sets", SETS)]),
    # "per-set", "one" and "up" with telemetry on: every span exported over OTLP to a receiver
    # in the bench's own process that counts and drops them (a collector's work is not
    # Atlantic's), and /metrics served. Interleave them for the cost of telemetry:
    #   --topologies up,up-traced,up,up-traced
    "per-set-traced": ("process per set, telemetry on", [(s, [s]) for s in SETS]),
    "one-traced": ("one process, telemetry on", [("all sets", SETS)]),
    "up-traced": ("one process, NATS users (atlantic up), telemetry on", [("all sets", SETS)]),
}
CLUSTERED = {"r3": 3}  # NATS nodes per topology; one unless named here
WITH_NATS_USERS = {"up", "up-traced"}
TRACED = {"per-set-traced", "one-traced", "up-traced"}
RATES = [25.0, 50.0, 100.0, 200.0, 400.0]
GOOD_P99 = 0.25  # seconds created→RESERVED
HOPELESS_P99 = 5.0  # a sweep stops after a rate this far gone, or one that lost orders
SETTLE = 30.0  # seconds after its step's last send by which an order must be RESERVED
DRAIN = 180.0  # seconds a step's backlog may take to drain before its CPU is read
PAUSE = 0.01  # seconds: a PostgreSQL round trip is also timed after this long a pause
NATS_SERVER = "nats-server"  # read beside the Atlantic processes, not counted in their total
POSTGRES = "PostgreSQL"  # the world database's backends: read beside them too, where local
SERVERS = (NATS_SERVER, POSTGRES)
LOCAL_HOSTS = {None, "", "127.0.0.1", "localhost", "::1"}  # None: a Unix socket
BACKENDS = """
    SELECT pid FROM pg_stat_activity
     WHERE datname = current_database() AND pid <> pg_backend_pid()"""
CREATE = "atlantic.orders.create"
RESERVED_EVENT = "atlantic.events.order.inventory_reserved"
PASSWORD = "bench-shopper-pass"
RESERVED_AT = """
    SELECT k.key, min(h.at) AS at
      FROM orders.idempotency_keys k JOIN orders.history h ON h.order_id = k.order_id
     WHERE h.status = 'RESERVED' AND k.key = ANY($1::text[])
     GROUP BY k.key"""
UNPUBLISHED = "SELECT " + " + ".join(
    f"(SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL)"
    for schema in ("users", "catalog", "orders", "payments"))


@dataclass
class Plan:
    topologies: list[str] = field(default_factory=lambda: list(TOPOLOGIES))
    rates: list[float] = field(default_factory=lambda: list(RATES))
    callers: int = 64  # closed loop, each with one order in the saga at a time; 0: none


@dataclass
class Step:
    """Orders placed over one interval (rate 0: closed loop), what became of them, what it cost."""
    rate: float
    orders: int
    latencies: list[float]  # created→RESERVED of the orders RESERVED in time, seconds
    seconds: float  # first (intended) send to last RESERVED
    cpu: dict[str, float]  # process → CPU seconds over the step and its drain
    deliveries: dict[str, int]  # consumer → deliveries over the step and its drain
    refused: int  # create requests answered with an error or not at all
    drained: bool
    loop_cpu: dict[str, float] = field(default_factory=dict)  # Atlantic process → its main thread's


    @property
    def missing(self) -> int:
        return self.orders - len(self.latencies)

    @property
    def achieved(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    @property
    def p99(self) -> float:
        return percentile(self.latencies, .99)

    @property
    def good(self) -> bool:
        return not self.missing and self.p99 < GOOD_P99

    @property
    def hopeless(self) -> bool:
        return self.missing > 0 or self.p99 > HOPELESS_P99

    def cpu_per_order(self, process: str) -> float:
        return self.cpu[process] / self.orders

    @property
    def total_cpu_per_order(self) -> float:
        return sum(v for p, v in self.cpu.items() if p not in SERVERS) / self.orders

    def loop_cpu_per_order(self, process: str) -> float:
        return self.loop_cpu[process] / self.orders

    @property
    def total_loop_cpu_per_order(self) -> float:
        return sum(self.loop_cpu.values()) / self.orders


@dataclass
class Result:
    topology: str
    processes: list[str]
    echo: float  # CPU seconds of one raw nats-py echo round trip, same world
    idle: dict[str, float]  # process → CPU seconds per second, quiet
    # CPU seconds of one PostgreSQL round trip, back to back and after a pause, same world
    postgres: tuple[float, float] = (0.0, 0.0)
    steps: list[Step] = field(default_factory=list)
    closed: Step | None = None
    callers: int = 0

    @property
    def best_rate(self) -> float | None:
        """The highest rate that, with every lower one, kept p99 under 250 ms and lost nothing."""
        best = None
        for step in sorted(self.steps, key=lambda s: s.rate):
            if not step.good:
                break
            best = step.rate
        return best


def schedule(rate: float, seconds: float) -> list[float]:
    """Offsets from t0 at which the orders of an open-loop step are due."""
    return [i / rate for i in range(round(rate * seconds))]


class Shop:
    """A world serving one topology, with shoppers and products, and the readings steps take."""

    def __init__(self, world: World, nc: nats.NATS, db: asyncpg.Connection):
        self.world, self.nc, self.db = world, nc, db
        self.js = world.operator.nc.jetstream()
        self.processes = {name: psutil.Process(p.pid) for name, p in world.processes.items()}
        self.processes[NATS_SERVER] = psutil.Process(world.nats.process.pid)
        self.backends: dict[int, tuple[psutil.Process, float]] = {}  # pid → its last reading
        self.tokens: list[str] = []
        self.products: list[str] = []

    async def stock(self, shoppers: int = 16, products: int = 8) -> None:
        self.products = [await _product(self.nc, self.world) for _ in range(products)]
        self.tokens = [await _shopper(self.nc, n) for n in range(shoppers)]

    async def cpu(self) -> dict[str, tuple[float, float]]:
        """CPU seconds (user + system) each process has used so far: all its threads, and its
        main thread alone (the event loop: Python and its syscalls; the rest is native threads,
        chDB's above all). PostgreSQL's is that of the backends serving the world's database
        (the bench's own connection aside), when they run on this machine."""
        readings = {POSTGRES: (await self._postgres_cpu(), 0.0)}
        for name, process in self.processes.items():
            main = next((t for t in process.threads() if t.id == process.pid), None)
            readings[name] = (sum(process.cpu_times()[:2]),
                              main.user_time + main.system_time if main else 0.0)
        return readings

    async def _postgres_cpu(self) -> float:
        """What the database's backends have used, each up to when it was last seen: a
        connection opened meanwhile counts from its start, one closed keeps what it had used."""
        if urlsplit(self.world.settings.postgres_dsn).hostname not in LOCAL_HOSTS:
            return 0.0
        for r in await self.db.fetch(BACKENDS):
            with contextlib.suppress(psutil.Error):
                known = self.backends.get(r["pid"])
                process = known[0] if known else psutil.Process(r["pid"])
                if process.name().startswith("postgres"):
                    self.backends[r["pid"]] = (process, sum(process.cpu_times()[:2]))
        return sum(used for _, used in self.backends.values())

    async def delivered(self) -> dict[str, int]:
        """Deliveries so far of every durable consumer on the stream (redeliveries included)."""
        return {c.name: c.delivered.consumer_seq for c in await self.js.consumers_info(STREAM)}

    async def idle(self, seconds: float) -> dict[str, float]:
        """CPU seconds per second of each process over a quiet interval."""
        before = await self.cpu()
        await asyncio.sleep(seconds)  # the interval measured, not a wait for an outcome
        after = await self.cpu()
        return {name: (after[name][0] - before[name][0]) / seconds for name in after}

    async def place(self, n: int, key: str) -> str | None:
        """Places the n-th order (one item); its id, or None when refused or not answered."""
        body = json.dumps({"items": [{"productId": self.products[n % len(self.products)],
                                      "quantity": 1}]}).encode()
        headers = {"Authorization": f"Bearer {self.tokens[n % len(self.tokens)]}",
                   "Idempotency-Key": key}
        try:
            reply = await self.nc.request(CREATE, body, timeout=30, headers=headers)
        except nats.errors.Error:
            return None
        return None if "Nats-Service-Error" in (reply.headers or {}) else json.loads(
            reply.data)["orderId"]

    async def open_loop(self, rate: float, seconds: float) -> Step:
        loop = asyncio.get_running_loop()
        cpu, deliveries = await self.cpu(), await self.delivered()
        t0 = loop.time() + 0.1
        wall0 = time.time() + (t0 - loop.time())  # t0 on the clock PostgreSQL stamps with
        intended = {new_id(): offset for offset in schedule(rate, seconds)}
        sends = []
        for n, (key, offset) in enumerate(intended.items()):
            await asyncio.sleep(max(0.0, t0 + offset - loop.time()))
            sends.append(asyncio.create_task(self.place(n, key)))
        refused = sum(order_id is None for order_id in await asyncio.gather(*sends))
        return await self._outcome(rate, {k: wall0 + o for k, o in intended.items()}, refused,
                                   cpu, deliveries)

    async def closed_loop(self, callers: int, seconds: float) -> Step:
        """`callers` shoppers, each placing its next order once the last is reserved (seen on
        the catalog's InventoryReserved event; timed, like every order, by orders.history)."""
        loop = asyncio.get_running_loop()
        cpu, deliveries = await self.cpu(), await self.delivered()
        reserved: dict[str, asyncio.Future] = {}

        async def on_reserved(msg) -> None:
            future = reserved.setdefault(json.loads(msg.data)["orderId"], loop.create_future())
            if not future.done():
                future.set_result(None)

        sub = await self.nc.subscribe(RESERVED_EVENT, cb=on_reserved)
        sent: dict[str, float] = {}
        stop = time.monotonic() + seconds

        async def caller(n: int) -> int:
            refused = 0
            while time.monotonic() < stop:
                key = new_id()
                sent[key] = time.time()
                if (order_id := await self.place(n, key)) is None:
                    refused += 1
                    continue
                future = reserved.setdefault(order_id, loop.create_future())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, SETTLE)
            return refused

        refused = sum(await asyncio.gather(*(caller(n) for n in range(callers))))
        await sub.unsubscribe()
        return await self._outcome(0, sent, refused, cpu, deliveries)

    async def _outcome(self, rate: float, sent: dict[str, float], refused: int,
                       cpu: dict[str, tuple[float, float]], deliveries: dict[str, int]
                       ) -> Step:
        """Waits for the orders sent (key → wall-clock send time) to be RESERVED, then for the
        backlog to drain, and reads what the step cost."""
        settle_by = time.monotonic() + max(sent.values()) + SETTLE - time.time()
        reserved = await self._reserved(list(sent), settle_by)
        drained = await self._drained(time.monotonic() + DRAIN)
        cpu_after, deliveries_after = await self.cpu(), await self.delivered()
        return Step(
            rate, len(sent), [at - sent[key] for key, at in reserved.items()],
            max(reserved.values(), default=0) - min(sent.values()),
            {p: cpu_after[p][0] - cpu[p][0] for p in cpu},
            {c: n - deliveries.get(c, 0) for c, n in deliveries_after.items()},
            refused, drained,
            {p: cpu_after[p][1] - cpu[p][1] for p in cpu if p not in SERVERS})

    async def _reserved(self, keys: list[str], deadline: float) -> dict[str, float]:
        """When the orders set applied RESERVED to each order placed with these keys (wall
        clock), polled until every one is or the deadline passes."""
        found: dict[str, float] = {}
        while True:
            rows = await self.db.fetch(RESERVED_AT, [k for k in keys if k not in found])
            found |= {r["key"]: r["at"].timestamp() for r in rows}
            if len(found) == len(keys) or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.25)

    async def _drained(self, deadline: float) -> bool:
        """Waits until no consumer has anything pending and no outbox row waits to be
        published; False if that did not happen by the deadline."""
        while time.monotonic() < deadline:
            consumers = await self.js.consumers_info(STREAM)
            if (all(c.num_pending + c.num_ack_pending == 0 for c in consumers)
                    and await self.db.fetchval(UNPUBLISHED) == 0):
                return True
            await asyncio.sleep(0.25)
        return False


async def _shopper(nc: nats.NATS, n: int) -> str:
    email = f"bench-{new_id()[:8]}-{n}@example.com"
    await nc.request("atlantic.users.register", json.dumps(
        {"email": email, "password": PASSWORD, "name": "Bench"}).encode(), timeout=10)
    reply = await nc.request("atlantic.users.login", json.dumps(
        {"email": email, "password": PASSWORD}).encode(), timeout=10)
    return json.loads(reply.data)["token"]


def _progress(topology: str, what: str, step: Step) -> None:
    print(f"saga, {topology}, {what}: {step.orders} orders, {step.missing} not RESERVED, "
          f"p50 {ms(percentile(step.latencies, .5))}, p99 {ms(step.p99)}, "
          f"{step.total_cpu_per_order * 1e3:.1f} ms CPU/order", file=sys.stderr, flush=True)


async def topology(base: Settings, short: str, plan: Plan, seconds: float,
                   rss: dict[str, float]) -> Result:
    sink = OtlpSink(keep=False).start() if short in TRACED else None
    try:  # the sink outlives the world: the processes send their last spans as they stop
        return await _topology(base, short, plan, seconds, rss, sink)
    finally:
        if sink:
            sink.stop()


async def _topology(base: Settings, short: str, plan: Plan, seconds: float,
                    rss: dict[str, float], sink: OtlpSink | None) -> Result:
    name, layout = TOPOLOGIES[short]
    async with open_world(base, f"bench_saga_{short.replace('-', '_')}_{os.getpid()}",
                          nodes=CLUSTERED.get(short, 1),
                          nats_users=short in WITH_NATS_USERS) as world:
        for process, sets in layout:
            telemetry = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
                         "ATLANTIC_METRICS_PORT": str(free_port())} if sink else {}
            await world.serve(sets, key=process, **telemetry)
        # As a client application would (the `client` NATS user where the server has users);
        # the stream's consumers are read as the operator.
        nc = await accounts.connect(world.client_url)
        db = await asyncpg.connect(world.settings.postgres_dsn)
        try:
            shop = Shop(world, nc, db)
            await shop.stock()
            await shop.open_loop(10, 2)  # warm: pools, caches, consumers; not reported
            echo = await asyncio.to_thread(echo_cpu, accounts.url_for(
                world.nats.url, world.settings.data_dir, "admin"))
            postgres = tuple([await asyncio.to_thread(
                postgres_cpu, world.settings.postgres_dsn, pause, count)
                for pause, count in ((0.0, 1_000), (PAUSE, 200))])
            result = Result(name, [p for p, _ in layout], echo, await shop.idle(seconds),
                            postgres, callers=plan.callers)
            for rate in plan.rates:
                result.steps.append(step := await shop.open_loop(rate, seconds))
                _progress(name, f"{rate:g}/s", step)
                if step.hopeless:
                    break
            if plan.callers:
                result.closed = await shop.closed_loop(plan.callers, seconds)
                _progress(name, f"closed loop, {plan.callers} callers", result.closed)
            for process, p in world.processes.items():
                rss[f"{process} (saga, {name})"] = peak_rss_mb(p.pid)
            if sink:
                print(f"saga, {name}: {sink.received:,} spans received", file=sys.stderr,
                      flush=True)
            return result
        finally:
            await db.close()
            await nc.close()


async def saga(base: Settings, plan: Plan, seconds: float,
               rss: dict[str, float]) -> tuple[list[Row], list[str]]:
    results = [await topology(base, t, plan, seconds, rss) for t in plan.topologies]
    return rows(results), [table for r in results for table in tables(r)]


# --- the report ------------------------------------------------------------------------------

def _shortfall(step: Step) -> str:
    """What did not go as it should, as clauses to append; empty when all went well."""
    said = []
    if step.missing:
        said.append(f"{step.missing} of {step.orders} NOT reserved {SETTLE:.0f} s after the "
                    "last send")
    if step.refused:
        said.append(f"{step.refused} creates refused or unanswered")
    if not step.drained:
        said.append("backlog NOT drained when CPU was read")
    return "".join(f"; {clause}" for clause in said)


def _step_row(r: Result, step: Step) -> Row:
    cpu = step.total_cpu_per_order
    measured = (f"{step.achieved:,.0f} orders/s achieved; created→RESERVED p50 "
                f"{ms(percentile(step.latencies, .5))}, p99 {ms(step.p99)}; "
                f"{cpu * 1e3:.1f} ms CPU/order{_shortfall(step)}")
    ceiling = f"{cpu / r.echo:,.0f} echo round trips of CPU/order (1 = {r.echo * 1e6:.0f} µs)"
    verdict = f"p99 {miss(step.p99, GOOD_P99, higher_is_better=False)}" + (
        f"; {step.missing} not RESERVED" if step.missing else "")
    target = "p99 < 250 ms, every order RESERVED"
    if r.topology == "one process" and step.rate == 100:
        target = "p99 < 250 ms; ≤ 5 ms CPU/order"
        verdict += f"; CPU {miss(cpu, 0.005, higher_is_better=False)}"
    return Row(f"order saga open loop, {r.topology}, {step.rate:g} orders/s offered",
               measured, ceiling, target, verdict)


def rows(results: list[Result]) -> list[Row]:
    out = []
    per_set = next((r for r in results if r.topology == "process per set"), None)
    for r in results:
        out += [_step_row(r, step) for step in r.steps]
        best = r.best_rate
        tried = ", ".join(f"{s.rate:g}" for s in r.steps)
        summary = Row(f"order saga open loop, {r.topology}: highest rate with p99 < 250 ms",
                      f"{best:g} orders/s" if best else "none", f"rates tried: {tried}/s")
        if r.topology == "process per set":
            summary.target = "≥ 300 orders/s"
            summary.verdict = miss(best or 0, 300)
        if r.topology == "two replicas per set" and per_set:
            theirs = {s.rate: s.total_cpu_per_order for s in per_set.steps}
            ratios = [f"×{s.total_cpu_per_order / theirs[s.rate]:.2f} at {s.rate:g}/s"
                      for s in r.steps if s.rate in theirs]
            summary.measured += ("; CPU/order vs process per set: " + ", ".join(ratios)
                                 if ratios else "")
            summary.target = "CPU/order flat vs process per set"
            summary.ceiling += f"; {ANALYTICS_ONCE}"
        out.append(summary)
        if c := r.closed:
            out.append(Row(
                f"order saga CLOSED loop (peak throughput only), {r.topology}, "
                f"{r.callers} callers, each with one order in the saga at a time",
                f"{c.achieved:,.0f} orders/s created→RESERVED ({c.orders} orders); "
                f"p50 {ms(percentile(c.latencies, .5))}, p99 {ms(c.p99)} (closed-loop latency "
                f"hides queueing); {c.total_cpu_per_order * 1e3:.1f} ms CPU/order"
                f"{_shortfall(c)}"))
    return out


def tables(r: Result) -> list[str]:
    """Markdown: CPU by process (idle and per order) and deliveries per order by consumer."""
    steps = [(f"{s.rate:g}/s", s) for s in r.steps]
    if r.closed:
        steps.append(("closed loop", r.closed))
    columns = [*r.processes, "total", *SERVERS]
    cpu = [f"### order saga, {r.topology}: CPU by process", "",
           "Idle: ms of CPU per second over a quiet interval as long as a step. "
           "Load: ms of CPU per order over the step and its drain. "
           f"{NATS_SERVER} and {POSTGRES} (the backends serving the world's database) are not "
           "Atlantic processes and are not in the total. One raw "
           f"nats-py echo round trip cost {r.echo * 1e6:.0f} µs of CPU in this world; one "
           f"PostgreSQL round trip (`SELECT 1`) {r.postgres[0] * 1e6:.0f} µs back to back and "
           f"{r.postgres[1] * 1e6:.0f} µs after a {PAUSE * 1e3:.0f} ms pause (made by a "
           "process back from idle, as most of an order's are at these rates). "
           "Of which event loop: the process's main thread (Python and its syscalls); the rest "
           "is native threads, chDB's above all."
           + (f" ({ANALYTICS_ONCE}.)" if r.topology == "two replicas per set" else ""), "",
           "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    idle_total = sum(r.idle[p] for p in r.processes)
    cpu.append("| idle, ms/s | " + " | ".join(
        f"{v * 1e3:.1f}" for v in [*(r.idle[p] for p in r.processes), idle_total,
                                   *(r.idle[p] for p in SERVERS)]) + " |")
    for label, s in steps:
        cpu.append(f"| {label}, ms/order | " + " | ".join(
            f"{v * 1e3:.1f}" for v in [*(s.cpu_per_order(p) for p in r.processes),
                                       s.total_cpu_per_order,
                                       *(s.cpu_per_order(p) for p in SERVERS)])
            + " |")
    for label, s in steps:
        cpu.append(f"| {label}, of which event loop | " + " | ".join(
            f"{v * 1e3:.1f}" for v in [*(s.loop_cpu_per_order(p) for p in r.processes),
                                       s.total_loop_cpu_per_order]) + " | | |")
    consumers = sorted({c for _, s in steps for c in s.deliveries})
    deliveries = [f"### order saga, {r.topology}: deliveries per order by durable consumer", "",
                  "| | " + " | ".join([*consumers, "total"]) + " |",
                  "|---" * (len(consumers) + 2) + "|"]
    for label, s in steps:
        per = [s.deliveries.get(c, 0) / s.orders for c in consumers]
        deliveries.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in [*per, sum(per)])
                          + " |")
    return ["\n".join(cpu), "\n".join(deliveries)]
