"""`atlantic bench`: every workload beside its own ceiling, measured in the same run so the
ratio holds on a noisy machine; a table on the terminal and dated rows appended to BENCHMARKS.md.

Each workload gets a world of its own (runtime.bench.world): its own nats-server, PostgreSQL
database and chDB directory, and the handler sets in `atlantic serve` processes, as deployed.
"""

import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import nats
import psutil

from contracts.base import new_id
from contracts.events import OrderCreated, OrderItem
from runtime.bench.world import World, open_world
from runtime.loadgen import percentile
from runtime.settings import Settings

SAGA_SETS = ["users", "catalog", "orders", "payments"]
PASSWORD = "bench-shopper-pass"


@dataclass
class Row:
    workload: str
    measured: str
    ceiling: str = ""
    target: str = ""
    verdict: str = ""


@dataclass
class Sizes:
    seconds: float  # per request-reply and saga measurement
    ingest_events: int
    steady_seconds: float  # each steady ingest rate, and the idle interval beside them
    dashboard_events: tuple[int, int]
    repeats: int


QUICK = Sizes(4, 30_000, 15, (100_000, 1_000_000), 10)
FULL = Sizes(10, 200_000, 30, (1_000_000, 10_000_000), 30)


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
                 seconds: float) -> tuple[float, list[float]]:
    """Requests back to back from `in_flight` callers; (requests/s, latencies)."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while (began := time.perf_counter()) < stop:
            await nc.request(subject, payload, timeout=10)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return len(latencies) / (time.perf_counter() - began), latencies


# --- a. request-reply --------------------------------------------------------------------------

async def request_reply(base: Settings, sizes: Sizes, rss: dict[str, float]) -> list[Row]:
    async with open_world(base, f"bench_rr_{os.getpid()}") as world:
        catalog = await world.serve(["catalog", "users"])
        raw = subprocess.Popen([  # noqa: ASYNC220 (returns at once)
            sys.executable, "-m", "runtime.bench.ceilings", "responder",
                                world.settings.nats_url, world.settings.redis_url,
                                world.settings.redis_prefix, "bench.raw.products.get"],
                               stdout=subprocess.PIPE)
        await asyncio.to_thread(raw.stdout.readline)  # "ready"
        nc = await nats.connect(world.settings.nats_url)
        try:
            product_id = await _product(nc, world)
            payload = json.dumps({"productId": product_id}).encode()
            await nc.request("atlantic.catalog.products.get", payload, timeout=5)  # cache it
            rows = []
            for in_flight in (1, 64):
                await hammer(nc, "atlantic.catalog.products.get", payload, in_flight, 1)  # warm
                ours, lat = await hammer(nc, "atlantic.catalog.products.get", payload, in_flight,
                                         sizes.seconds)
                await hammer(nc, "bench.raw.products.get", payload, in_flight, 1)
                ceiling, raw_lat = await hammer(nc, "bench.raw.products.get", payload, in_flight,
                                                sizes.seconds)
                ratio = ours / ceiling
                rows.append(Row(
                    f"request-reply catalog.products.get (cache hit), {in_flight} in flight",
                    f"{ours:,.0f} req/s, p50 {ms(percentile(lat, .5))}, "
                    f"p99 {ms(percentile(lat, .99))}",
                    f"{ceiling:,.0f} req/s, p50 {ms(percentile(raw_lat, .5))}, "
                    f"p99 {ms(percentile(raw_lat, .99))}; ratio {ratio:.2f}",
                    "≥ 0.5 of the raw ceiling", miss(ratio, 0.5)))
            rss["catalog+users (request-reply)"] = peak_rss_mb(catalog.pid)
            return rows
        finally:
            await nc.close()
            raw.terminate()
            raw.wait()


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


# --- b. the order saga ---------------------------------------------------------------------------

async def saga(base: Settings, sizes: Sizes, layout: str, rss: dict[str, float]) -> Row:
    """Orders placed by 64 callers for `seconds`; each timed from its create request to the
    InventoryReserved event (read off the stream's subjects with a core subscription)."""
    async with open_world(base, f"bench_saga_{layout.replace(' ', '_')}_{os.getpid()}") as world:
        if layout == "one process":
            processes = {"all four sets": await world.serve(SAGA_SETS)}
        else:
            processes = {name: await world.serve([name]) for name in SAGA_SETS}
        nc = await nats.connect(world.settings.nats_url)
        try:
            product_ids = [await _product(nc, world) for _ in range(8)]
            tokens = [await _shopper(nc, n) for n in range(16)]
            sent: dict[str, float] = {}
            reserved: dict[str, float] = {}

            async def on_reserved(msg) -> None:
                reserved[json.loads(msg.data)["orderId"]] = time.perf_counter()

            await nc.subscribe("atlantic.events.order.inventory_reserved", cb=on_reserved)
            stop = time.perf_counter() + sizes.seconds

            async def shopper(n: int) -> None:
                headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
                while (began := time.perf_counter()) < stop:
                    body = json.dumps({"items": [{"productId": product_ids[n % 8],
                                                  "quantity": 1}]}).encode()
                    reply = await nc.request("atlantic.orders.create", body, timeout=30,
                                             headers=headers | {"Idempotency-Key": new_id()})
                    sent[json.loads(reply.data)["orderId"]] = began

            first = time.perf_counter()
            await asyncio.gather(*(shopper(n) for n in range(64)))
            deadline = time.perf_counter() + 120
            # The events arrive on a callback; polling two dicts is simpler than signalling.
            while set(sent) - set(reserved) and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            done = [o for o in sent if o in reserved]
            last = max(reserved[o] for o in done)
            latencies = [reserved[o] - sent[o] for o in done]
            for name, process in processes.items():
                rss[f"{name} (saga, {layout})"] = peak_rss_mb(process.pid)
        finally:
            await nc.close()
    rate = len(done) / (last - first)
    p99 = percentile(latencies, .99)
    lost = len(sent) - len(done)
    return Row(f"order saga, {layout} (64 callers)",
               f"{rate:,.0f} orders/s created→reserved ({len(done)} orders"
               f"{f', {lost} NOT reserved' if lost else ''}); p50 {ms(percentile(latencies, .5))},"
               f" p99 {ms(p99)}", "",
               "≥ 1,000 orders/s, p99 < 250 ms",
               f"rate {miss(rate, 1000)}; p99 {miss(p99, 0.25, higher_is_better=False)}")


async def _shopper(nc: nats.NATS, n: int) -> str:
    email = f"bench-{new_id()[:8]}-{n}@example.com"
    await nc.request("atlantic.users.register", json.dumps(
        {"email": email, "password": PASSWORD, "name": "Bench"}).encode(), timeout=10)
    reply = await nc.request("atlantic.users.login", json.dumps(
        {"email": email, "password": PASSWORD}).encode(), timeout=10)
    return json.loads(reply.data)["token"]


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


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU the process has used so far, every thread (chDB's too)."""
    times = process.cpu_times()
    return times.user + times.system


@dataclass
class Steady:
    rate: float  # offered
    achieved: float
    events: int
    cpu: float  # seconds, from the first publication to the last ack
    seconds: float
    since: datetime
    until: datetime


async def _steady(js, process: psutil.Process, rate: float, seconds: float) -> Steady:
    count, start = int(rate * seconds), time.time()
    began, before = time.perf_counter(), cpu_seconds(process)
    achieved = await _publish_at(js, count, start, rate)
    ended = await _drained(js, "analytics-ingest")
    cpu = cpu_seconds(process) - before
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
            echo = json.loads(_run_module("runtime.bench.ceilings", "echo",
                                          world.settings.nats_url))["cpu_per_round_trip"]
            analytics = await world.serve(["analytics"])
            process = psutil.Process(analytics.pid)
            await asyncio.sleep(3)  # start-up's own work (schema, repair) settles
            # Idle: the same process over a quiet interval as long as each steady run.
            before = cpu_seconds(process)
            await asyncio.sleep(sizes.steady_seconds)
            idle = (cpu_seconds(process) - before) / sizes.steady_seconds  # CPU s per s
            # CPU per event and lag at steady rates, before any backlog leaves merges behind.
            steady = [await _steady(js, process, rate, sizes.steady_seconds)
                      for rate in STEADY_RATES]
            # Sustained throughput: a backlog published at once, drained as fast as it goes.
            backlog = _events(sizes.ingest_events)
            began = time.perf_counter()
            await _publish(js, backlog)
            ours = len(backlog) / (await _drained(js, "analytics-ingest") - began)
            rss["analytics (ingest)"] = peak_rss_mb(analytics.pid)
            world.stop("analytics")  # chDB: one process per directory
            lags = [json.loads(_run_module("runtime.bench.queries", "lag",
                                           world.settings.data_dir, s.since.isoformat(),
                                           s.until.isoformat())) for s in steady]
            # The ceiling over the very same stream, into a directory of its own.
            raw = json.loads(_run_module("runtime.bench.ceilings", "ingest",
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


def _run_module(module: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=3_600, check=True)
    return done.stdout.strip().splitlines()[-1]


# --- d. dashboard queries -------------------------------------------------------------------------

def dashboard(sizes: Sizes, tmp: Path) -> list[Row]:
    rows = []
    for events in sizes.dashboard_events:
        result = json.loads(_run_module("runtime.bench.queries", "dashboard",
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

    from runtime.services import nats_server_binary

    server = subprocess.run([nats_server_binary(), "--version"], capture_output=True,
                            text=True).stdout.strip()
    return (f"Python {platform.python_version()}, FastStream {version('faststream')}, "
            f"nats-py {version('nats-py')}, {server}")


async def run(base: Settings, quick: bool, only: set[str]) -> tuple[list[Row], dict[str, float]]:
    sizes = QUICK if quick else FULL
    rows: list[Row] = []
    rss: dict[str, float] = {}
    if "requests" in only:
        rows += await request_reply(base, sizes, rss)
    if "saga" in only:
        rows.append(await saga(base, sizes, "one process", rss))
        rows.append(await saga(base, sizes, "process per set", rss))
    if "ingest" in only:
        rows += await ingest(base, sizes, rss)
    if "queries" in only:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="atlantic-bench-") as tmp:
            rows += await asyncio.to_thread(dashboard, sizes, Path(tmp))
    return rows, rss


def markdown(rows: list[Row], rss: dict[str, float], command: str, seconds: float) -> str:
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
    return "\n".join(lines) + "\n"
