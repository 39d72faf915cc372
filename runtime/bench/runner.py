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
from typing import TYPE_CHECKING

import nats

from contracts.base import new_id
from contracts.events import OrderCreated, OrderItem
from runtime.bench.world import World, open_world
from runtime.loadgen import percentile
from runtime.settings import Settings

if TYPE_CHECKING:  # saga.py builds on this module, so it is imported in run()
    from runtime.bench.saga import Plan

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
    live_seconds: float
    dashboard_events: tuple[int, int]
    repeats: int


QUICK = Sizes(4, 10, 30_000, 8, (100_000, 1_000_000), 10)
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


# --- b. the order saga: runtime.bench.saga -------------------------------------------------------

# --- c. analytics ingest -------------------------------------------------------------------------

def _events(count: int) -> list[tuple[str, bytes, str]]:
    price = Decimal("12.50")
    events = [OrderCreated(order_id=new_id(), customer_id=f"c{n % 1000}", total_price=price,
                           items=[OrderItem(product_id=f"p{n % 100}", quantity=1, price=price)])
              for n in range(count)]
    return [(e.subject, e.model_dump_json().encode(), e.event_id) for e in events]


async def _publish(js, messages, per_second: float | None = None) -> None:
    for n, (subject, body, msg_id) in enumerate(messages):
        await js.publish_async(subject, body, headers={"Nats-Msg-Id": msg_id})
        if per_second and n % 100 == 99:
            await asyncio.sleep(100 / per_second)
    await js.publish_async_completed()


async def _drained(js, durable: str, seconds: float = 600) -> float:
    """Waits until the consumer has nothing pending; when that happened."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        info = await js.consumer_info("ATLANTIC", durable)
        if info.num_pending + info.num_ack_pending == 0:
            return time.perf_counter()
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{durable} still had events pending after {seconds} s")


async def ingest(base: Settings, sizes: Sizes, rss: dict[str, float]) -> list[Row]:
    async with open_world(base, f"bench_ingest_{os.getpid()}") as world:
        nc = await nats.connect(world.settings.nats_url)
        js = nc.jetstream()
        try:
            analytics = await world.serve(["analytics"])
            # Sustained throughput: a backlog published at once, drained as fast as it goes.
            backlog = _events(sizes.ingest_events)
            began = time.perf_counter()
            await _publish(js, backlog)
            ours = len(backlog) / (await _drained(js, "analytics-ingest") - began)
            # Lag: events at a steady rate well inside capacity, timed publication to insert.
            live_since = datetime.now(UTC)
            live_rate = min(2_000.0, ours / 2)
            live = _events(int(live_rate * sizes.live_seconds))
            await _publish(js, live, live_rate)
            await _drained(js, "analytics-ingest")
            rss["analytics (ingest)"] = peak_rss_mb(analytics.pid)
            world.stop("analytics")  # chDB: one process per directory
            lag = json.loads(_run_module("runtime.bench.queries", "lag",
                                         world.settings.data_dir, live_since.isoformat()))
            # The ceiling over the very same stream, into a directory of its own.
            raw = json.loads(_run_module("runtime.bench.ceilings", "ingest",
                                         world.settings.nats_url,
                                         str(Path(world.settings.data_dir) / "raw"),
                                         str(len(backlog) + len(live))))
        finally:
            await nc.close()
    ceiling = raw["events"] / raw["seconds"]
    ratio = ours / ceiling
    return [
        Row("analytics ingest (JetStream → ClickHouse)",
            f"{ours:,.0f} events/s over a {len(backlog):,}-event backlog",
            f"{ceiling:,.0f} events/s raw fetch-and-insert; ratio {ratio:.2f}",
            "≥ 0.5 of the raw ceiling", miss(ratio, 0.5)),
        Row("analytics ingest lag (publish → row)",
            f"p50 {ms(lag['p50'])}, p99 {ms(lag['p99'])} at {live_rate:,.0f} events/s "
            f"({lag['events']:,} events)", "", "p99 < 1 s",
            miss(lag["p99"], 1.0, higher_is_better=False)),
    ]


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


async def run(base: Settings, quick: bool, only: set[str],
              plan: "Plan | None" = None) -> tuple[list[Row], dict[str, float], list[str]]:
    """The rows, peak RSS by process, and further markdown tables (the saga's breakdowns)."""
    from runtime.bench.saga import Plan, saga

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
