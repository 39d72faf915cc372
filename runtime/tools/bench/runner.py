"""`atlantic bench`: every workload beside its own ceiling, measured in the same run so the
ratio holds on a noisy machine; a table on the terminal and dated rows appended to BENCHMARKS.md.

Each workload gets a world of its own (runtime.tools.bench.world): its own nats-server, PostgreSQL
database and chDB directory, and the handler sets in `atlantic serve` processes, as deployed.
"""

import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import psutil

from contracts.base import new_id
from contracts.events import OrderCreated, OrderItem
from handlers import HANDLER_SETS
from runtime.settings import Settings
from runtime.tools.bench.world import World, open_world
from runtime.tools.loadgen import percentile

if TYPE_CHECKING:  # saga.py builds on this module, so it is imported in run()
    from runtime.tools.bench.saga import Plan

@dataclass
class Row:
    workload: str
    measured: str
    ceiling: str = ""
    target: str = ""
    verdict: str = ""


@dataclass
class Sizes:
    seconds: float  # per request-reply measurement
    saga_seconds: float  # per saga rate step
    ingest_events: int
    steady_seconds: float  # each steady ingest rate, and the idle interval beside them
    dashboard_events: tuple[int, int]
    repeats: int


QUICK = Sizes(4, 10, 30_000, 15, (100_000, 1_000_000), 10)
FULL = Sizes(10, 30, 200_000, 30, (1_000_000, 10_000_000), 30)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def miss(value: float, goal: float, higher_is_better: bool = True) -> str:
    ok = value >= goal if higher_is_better else value <= goal
    if ok:
        return "met"
    short = (goal - value) / goal if higher_is_better else (value - goal) / goal
    return f"MISSED by {short:.0%}"


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def hammer(nc: nats.NATS, subject: str, payload: bytes, in_flight: int,
                 seconds: float, headers: dict[str, str] | None = None,
                 ) -> tuple[float, list[float]]:
    """Requests back to back from `in_flight` callers; (requests/s, latencies)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while (began := time.perf_counter()) < stop:
            await nc.request(subject, payload, timeout=10, headers=headers)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return len(latencies) / (time.perf_counter() - began), latencies


# --- a. request-reply --------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far, every thread (chDB's too)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


@dataclass
class Served:
    rate: float
    latencies: list[float]
    cpu: float  # seconds of the responding process's CPU per request

    def describe(self) -> str:
        return (f"{self.rate:,.0f} req/s, p50 {ms(percentile(self.latencies, .5))}, "
                f"p99 {ms(percentile(self.latencies, .99))}, {self.cpu * 1e6:,.0f} µs CPU/req")


@dataclass
class Responder:
    """Something that answers a request, and the process whose CPU it spends."""

    nc: nats.NATS
    pid: int
    subject: str
    payload: bytes
    headers: dict[str, str] | None = None
    runs: list[Served] = field(default_factory=list)

    async def measure(self, in_flight: int, seconds: float) -> None:
        before = cpu_seconds(self.pid)
        rate, latencies = await hammer(self.nc, self.subject, self.payload, in_flight, seconds,
                                       self.headers)
        self.runs.append(Served(rate, latencies, (cpu_seconds(self.pid) - before)
                                / max(len(latencies), 1)))

    def median(self) -> Served:
        """The median round's rate and CPU; latencies of every round."""
        return Served(statistics.median(r.rate for r in self.runs),
                      [x for r in self.runs for x in r.latencies],
                      statistics.median(r.cpu for r in self.runs))


async def interleaved(responders: list[Responder], in_flight: int, seconds: float,
                      rounds: int = 3) -> None:
    """A B C A B C ...: each responder measured `rounds` times, turn about, after a warm-up, so
    that the machine's drift falls on all of them alike (PERFORMANCE.md, rule 4)."""
    for r in responders:
        await hammer(r.nc, r.subject, r.payload, in_flight, 1, r.headers)
        r.runs.clear()
    for _ in range(rounds):
        for r in responders:
            await r.measure(in_flight, seconds)


async def idle_share(pid: int, seconds: float = 2) -> float:
    """The share of a core the process uses while nothing is asked of it."""
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


REQUEST_LAYOUTS = {"catalog alone": ["catalog"], "one process": list(HANDLER_SETS)}


async def request_reply(base: Settings, sizes: Sizes, rss: dict[str, float]) -> list[Row]:
    """A cached catalog.products.get, from the catalog alone and from one process running every
    set (each in a world of its own, both up at once, measured turn about), beside a raw nats-py
    echo responder and a raw cached-read responder (Redis GET and pydantic,
    runtime.tools.bench.ceilings); then catalog.quote, and in the one process orders.create,
    users.me and orders.get (beside a raw responder making the same session and PostgreSQL
    reads). CPU per request is read off each responding process."""
    from runtime.tools.bench.saga import _shopper  # saga.py builds on this module

    seconds = sizes.seconds / 2  # per round; three rounds each
    async with contextlib.AsyncExitStack() as stack:
        ours: dict[str, Responder] = {}
        quotes: dict[str, Responder] = {}
        idle: dict[str, float] = {}
        for n, (layout, sets) in enumerate(REQUEST_LAYOUTS.items()):
            world = await stack.enter_async_context(
                open_world(base, f"bench_rr{n}_{os.getpid()}"))
            # Small pools: other work on the machine shares PostgreSQL's connections.
            if "users" not in sets:  # the admin's sign-in, answered elsewhere than measured
                await world.serve(["users"], ATLANTIC_POSTGRES_POOL_SIZE="2")
            process = await world.serve(sets, ATLANTIC_POSTGRES_POOL_SIZE="4")
            stack.callback(lambda pid=process.pid, name=layout:
                           rss.__setitem__(f"{name} (request-reply)", peak_rss_mb(pid)))
            nc = await nats.connect(world.settings.nats_url)
            stack.push_async_callback(nc.close)
            product_id = await _product(nc, world)
            get = json.dumps({"productId": product_id}).encode()
            await nc.request("atlantic.catalog.products.get", get, timeout=5)  # cache it
            ours[layout] = Responder(nc, process.pid, "atlantic.catalog.products.get", get)
            items = json.dumps({"items": [{"productId": product_id, "quantity": 1}]}).encode()
            quotes[layout] = Responder(nc, process.pid, "atlantic.catalog.quote", items)
            idle[layout] = await idle_share(process.pid)
            if layout == "one process":
                shopper = {"Authorization": f"Bearer {await _shopper(nc, 0)}"}
                create = Responder(nc, process.pid, "atlantic.orders.create", items, shopper)
                order = json.loads((await nc.request("atlantic.orders.create", items,
                                                     headers=shopper, timeout=10)).data)
                order_get = json.dumps({"orderId": order["orderId"]}).encode()
                signed_in = [  # a Redis session read, then a PostgreSQL read
                    Responder(nc, process.pid, "atlantic.users.me", b"", shopper),
                    Responder(nc, process.pid, "atlantic.orders.get", order_get, shopper)]
        s = world.settings  # the one process's
        signed_in_raw = _ceiling(stack, "signed-in-responder", s.nats_url, s.redis_url,
                                 s.redis_prefix, s.postgres_dsn)
        raw_signed_in = [Responder(nc, signed_in_raw, "bench.raw.users.me", b"", shopper),
                         Responder(nc, signed_in_raw, "bench.raw.orders.get", order_get, shopper)]
        echo = Responder(nc, _ceiling(stack, "echo-responder", s.nats_url, "bench.raw.echo"),
                         "bench.raw.echo", get)
        raw = Responder(nc, _ceiling(stack, "responder", s.nats_url, s.redis_url,
                                     s.redis_prefix, "bench.raw.products.get"),
                        "bench.raw.products.get", get)
        rows = []
        for in_flight in (1, 64):
            await interleaved([*ours.values(), echo, raw], in_flight, seconds)
            floor, read = echo.median(), raw.median()
            goal = 0.5 if in_flight == 1 else 0.25
            for layout, responder in ours.items():
                got = responder.median()
                ratio = got.rate / floor.rate
                target, verdict = f"≥ {goal} of the echo", f"ratio {miss(ratio, goal)}"
                if in_flight == 64:
                    target += ", ≤ 300 µs CPU/req"
                    verdict += f"; CPU {miss(got.cpu, 300e-6, higher_is_better=False)}"
                rows.append(Row(
                    f"request-reply catalog.products.get (cache hit), {layout} "
                    f"(idle {idle[layout]:.0%} of a core), {in_flight} in flight",
                    got.describe(), f"echo {floor.describe()}; raw cached read "
                    f"{read.describe()}; ratio to echo {ratio:.2f}", target, verdict))
            if in_flight == 1:
                alone, one = ours["catalog alone"].runs, ours["one process"].runs
                share = statistics.median(o.rate / a.rate for o, a in zip(one, alone, strict=True))
                rows.append(Row("request-reply, one process against the catalog alone, 1 in "
                                "flight (median of the rounds' ratios)",
                                f"{share:.2f} of the catalog alone's req/s", "", "≥ 0.8",
                                miss(share, 0.8)))
        await interleaved([*quotes.values(), create, *signed_in, *raw_signed_in, echo], 1,
                          seconds)
        floor = echo.median()
        for layout, responder in quotes.items():
            rows.append(Row(f"request-reply catalog.quote, {layout}, 1 in flight",
                            responder.median().describe()))
        rows.append(Row("request-reply orders.create, one process, 1 in flight (CPU: the "
                        "whole process, the saga each order sets off included)",
                        create.median().describe()))
        for responder, raw_read in zip(signed_in, raw_signed_in, strict=True):
            got, read = responder.median(), raw_read.median()
            rows.append(Row(
                f"request-reply {responder.subject.removeprefix('atlantic.')}, one process, "
                "1 in flight", got.describe(),
                f"raw session and PostgreSQL read {read.describe()}; echo {floor.describe()}; "
                f"ratio to the raw read {got.rate / read.rate:.2f}, to echo "
                f"{got.rate / floor.rate:.2f}"))
        return rows


def _ceiling(stack: contextlib.ExitStack | contextlib.AsyncExitStack, kind: str,
             *args: str) -> int:
    """Starts a ceiling responder (runtime.tools.bench.ceilings) until the stack closes; its pid."""
    process = subprocess.Popen([sys.executable, "-m", "runtime.tools.bench.ceilings", kind, *args],
                               stdout=subprocess.PIPE)
    stack.callback(process.wait)
    stack.callback(process.terminate)
    process.stdout.readline()  # "ready"
    return process.pid


async def _admin_token(nc: nats.NATS, world: World) -> str:
    s = world.settings
    login = json.loads((await nc.request("atlantic.users.login", json.dumps(
        {"email": s.admin_email, "password": s.admin_password}).encode(), timeout=10)).data)
    return login["token"]


async def _product(nc: nats.NATS, world: World) -> str:
    token = getattr(world, "admin_token", None) or await _admin_token(nc, world)
    world.admin_token = token  # logins are rate-limited per account
    reply = await nc.request("atlantic.catalog.products.create", json.dumps({
        "name": "Bench kettle", "price": "19.99", "category": "bench", "stock": 1_000_000,
    }).encode(), headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return json.loads(reply.data)["productId"]


# --- b. the order saga: runtime.tools.bench.saga ------------------------------------------------

# --- c. analytics ingest -------------------------------------------------------------------------

STEADY_RATES = (50.0, 2_000.0)  # a quiet shop and a busy one, events/s offered open loop


def _event(n: int, timestamp: datetime | None = None) -> tuple[str, bytes, str]:
    price = Decimal("12.50")
    event = OrderCreated(order_id=new_id(), customer_id=f"c{n % 1000}", total_price=price,
                         items=[OrderItem(product_id=f"p{n % 100}", quantity=1, price=price)],
                         **({"timestamp": timestamp} if timestamp else {}))
    return event.subject, event.model_dump_json().encode(), event.event_id


def _events(count: int) -> list[tuple[str, bytes, str]]:
    return [_event(n) for n in range(count)]


async def _publish(js, messages) -> None:
    for subject, body, msg_id in messages:
        await js.publish_async(subject, body, headers={"Nats-Msg-Id": msg_id})
    await js.publish_async_completed()


async def _publish_at(js, count: int, start: float, per_second: float) -> float:
    """Open loop: event n is due at start + n / per_second (epoch seconds) and is stamped
    with that moment, so a late send counts as lag; it goes out then whatever the ingest does
    (one that fell behind is sent at once, never skipped). Returns the rate achieved."""
    for n in range(count):
        due = start + n / per_second
        if (wait := due - time.time()) > 0:
            await asyncio.sleep(wait)
        subject, body, msg_id = _event(n, datetime.fromtimestamp(due, UTC))
        await js.publish_async(subject, body, headers={"Nats-Msg-Id": msg_id})
    await js.publish_async_completed()
    return count / (time.time() - start)


async def _drained(js, durable: str, seconds: float = 600) -> float:
    """Waits until the consumer has nothing pending; when that happened."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        info = await js.consumer_info("ATLANTIC", durable)
        if info.num_pending + info.num_ack_pending == 0:
            return time.perf_counter()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{durable} still had events pending after {seconds} s")


@dataclass
class Steady:
    rate: float  # offered
    achieved: float
    events: int
    cpu: float  # seconds, from the first publication to the last ack
    seconds: float
    since: datetime
    until: datetime


async def _steady(js, pid: int, rate: float, seconds: float) -> Steady:
    count, start = int(rate * seconds), time.time()
    began, before = time.perf_counter(), cpu_seconds(pid)
    achieved = await _publish_at(js, count, start, rate)
    ended = await _drained(js, "analytics-ingest")
    cpu = cpu_seconds(pid) - before
    return Steady(rate, achieved, count, cpu, ended - began, datetime.fromtimestamp(start, UTC),
                  datetime.fromtimestamp(start + count / rate, UTC))


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us"


async def ingest(base: Settings, sizes: Sizes, rss: dict[str, float]) -> list[Row]:
    async with open_world(base, f"bench_ingest_{os.getpid()}") as world:
        nc = await nats.connect(world.settings.nats_url)
        js = nc.jetstream()
        try:
            # The CPU unit of this machine (PERFORMANCE.md): one raw echo round trip.
            echo = echo_cpu(world.settings.nats_url)
            analytics = await world.serve(["analytics"])
            await asyncio.sleep(3)  # start-up's own work (schema, repair) settles
            # Idle: the same process over a quiet interval as long as each steady run.
            before = cpu_seconds(analytics.pid)
            await asyncio.sleep(sizes.steady_seconds)
            idle = (cpu_seconds(analytics.pid) - before) / sizes.steady_seconds  # CPU s per s
            # CPU per event and lag at steady rates, before any backlog leaves merges behind.
            steady = [await _steady(js, analytics.pid, rate, sizes.steady_seconds)
                      for rate in STEADY_RATES]
            # Sustained throughput: a backlog published at once, drained as fast as it goes.
            backlog = _events(sizes.ingest_events)
            began = time.perf_counter()
            await _publish(js, backlog)
            ours = len(backlog) / (await _drained(js, "analytics-ingest") - began)
            rss["analytics (ingest)"] = peak_rss_mb(analytics.pid)
            await world.stop("analytics")  # chDB: one process per directory
            lags = [json.loads(_run_module("runtime.tools.bench.queries", "lag",
                                           world.settings.data_dir, s.since.isoformat(),
                                           s.until.isoformat())) for s in steady]
            # The ceiling over the very same stream, into a directory of its own.
            raw = json.loads(_run_module("runtime.tools.bench.ceilings", "ingest",
                                         world.settings.nats_url,
                                         str(Path(world.settings.data_dir) / "raw"),
                                         str(len(backlog) + sum(s.events for s in steady))))
        finally:
            await nc.close()
    ceiling = raw["events"] / raw["seconds"]
    ratio = ours / ceiling
    rows = [Row("analytics ingest (JetStream → ClickHouse)",
                f"{ours:,.0f} events/s over a {len(backlog):,}-event backlog",
                f"{ceiling:,.0f} events/s raw fetch-and-insert; ratio {ratio:.2f}",
                "≥ 0.5 of the raw ceiling", miss(ratio, 0.5))]
    per_event = {}
    for s, lag in zip(steady, lags, strict=True):
        per_event[s.rate] = s.cpu / s.events
        net = (s.cpu - idle * s.seconds) / s.events
        rows.append(Row(
            f"analytics ingest at {s.rate:,.0f} events/s (open loop, {s.seconds:.0f} s)",
            f"CPU {us(per_event[s.rate])} per event ({per_event[s.rate] / echo:.1f} echo round"
            f" trips; {us(net)} less idle); lag p50 {ms(lag['p50'])}, p99 {ms(lag['p99'])}"
            f" ({lag['events']:,} events, {s.achieved:,.0f}/s achieved)", "", "lag p99 < 1 s",
            miss(lag["p99"], 1.0, higher_is_better=False)))
    quiet, busy = per_event[STEADY_RATES[0]], per_event[STEADY_RATES[-1]]
    net = [(s.cpu - idle * s.seconds) / s.events for s in (steady[0], steady[-1])]
    rows += [
        Row("analytics ingest CPU per event, quiet ÷ busy",
            f"{quiet / busy:.2f} ({us(quiet)} ÷ {us(busy)}); less idle {net[0] / net[1]:.2f}",
            "", "≤ 2", miss(quiet / busy, 2.0, higher_is_better=False)),
        Row("analytics idle CPU (same process, quiet)",
            f"{idle:.1%} of a core ({idle * 1e3:.1f} ms/s) over {sizes.steady_seconds:.0f} s",
            f"echo round trip {us(echo)} CPU", "", ""),
    ]
    return rows


def echo_cpu(nats_url: str, round_trips: int = 3_000) -> float:
    """The CPU unit of this machine (PERFORMANCE.md rule 2): seconds of CPU one raw nats-py
    echo round trip costs, requester and responder in one process."""
    return json.loads(_run_module("runtime.tools.bench.ceilings", "echo", nats_url,
                                  str(round_trips)))["cpu_seconds"]


def postgres_cpu(dsn: str, pause: float, round_trips: int) -> float:
    """Seconds of CPU one asyncpg `SELECT 1` round trip costs, each after `pause` seconds."""
    return json.loads(_run_module("runtime.tools.bench.ceilings", "postgres", dsn,
                                  str(round_trips), str(pause)))["cpu_seconds"]


def _run_module(module: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=3_600, check=True)
    return done.stdout.strip().splitlines()[-1]


# --- d. dashboard queries -------------------------------------------------------------------------

def dashboard(sizes: Sizes, tmp: Path) -> list[Row]:
    rows = []
    for events in sizes.dashboard_events:
        result = json.loads(_run_module("runtime.tools.bench.queries", "dashboard",
                                        str(tmp / f"dashboard-{events}"), str(events),
                                        str(sizes.repeats)))
        for name, (p50, p99) in result["queries"].items():
            rows.append(Row(f"query {name}, {events:,} events", f"p50 {ms(p50)}, p99 {ms(p99)}",
                            "", "p99 < 50 ms (on 10M)",
                            miss(p99, 0.05, higher_is_better=False)))
    return rows


# --- the run --------------------------------------------------------------------------------

def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    ram = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    return f"{os.cpu_count()} cores, {cpu}, {ram:.0f} GiB RAM"


def versions() -> str:
    from importlib.metadata import version

    from runtime.tools.services import nats_server_binary

    server = subprocess.run([nats_server_binary(), "--version"], capture_output=True,
                            text=True).stdout.strip()
    return (f"Python {platform.python_version()}, FastStream {version('faststream')}, "
            f"nats-py {version('nats-py')}, {server}")


async def run(base: Settings, quick: bool, only: set[str],
              plan: "Plan | None" = None) -> tuple[list[Row], dict[str, float], list[str]]:
    """The rows, peak RSS by process, and further markdown tables (the saga's breakdowns)."""
    from runtime.tools.bench.saga import Plan, saga

    sizes = QUICK if quick else FULL
    rows: list[Row] = []
    rss: dict[str, float] = {}
    notes: list[str] = []
    if "requests" in only:
        rows += await request_reply(base, sizes, rss)
    if "saga" in only:
        saga_rows, notes = await saga(base, plan or Plan(), sizes.saga_seconds, rss)
        rows += saga_rows
    if "ingest" in only:
        rows += await ingest(base, sizes, rss)
    if "queries" in only:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="atlantic-bench-") as tmp:
            rows += await asyncio.to_thread(dashboard, sizes, Path(tmp))
    if "web" in only:  # a browser's worth: only when asked for
        from runtime.tools.bench.web import web

        rows += await web(base, quick)
    return rows, rss, notes


def markdown(rows: list[Row], rss: dict[str, float], command: str, seconds: float,
             notes: list[str] = ()) -> str:
    lines = [f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — `{command}`", "",
             f"- machine: {machine()}", f"- versions: {versions()}",
             f"- took {seconds / 60:.1f} min", "",
             "| workload | measured | ceiling (same run) | target | verdict |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.workload} | {r.measured} | {r.ceiling} | {r.target} | {r.verdict} |"
              for r in rows]
    if rss:
        lines += ["", "| process | peak RSS under load |", "|---|---|"]
        lines += [f"| {name} | {mb:.0f} MiB |" for name, mb in rss.items()]
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"
