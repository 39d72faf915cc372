"""The ceilings Atlantic's numbers are read against, each run as its own process like the
handler sets are:

    python -m runtime.tools.bench.ceilings echo-responder NATS_URL SUBJECT
        a raw nats-py echo responder: every request answered with its own body. The floor of
        request-reply in Python on this NATS server.
    python -m runtime.tools.bench.ceilings responder NATS_URL REDIS_URL PREFIX SUBJECT
        a raw nats-py responder doing what catalog.products.get does on a cache hit: validate
        the request, read Redis, validate the product, reply with its JSON.
    python -m runtime.tools.bench.ceilings signed-in-responder NATS_URL REDIS_URL PREFIX DSN
        a raw nats-py responder doing what users.me and orders.get do (bench.raw.users.me,
        bench.raw.orders.get): resolve the bearer token's session in Redis, read the account or
        the order from PostgreSQL, check the order is the caller's, reply with its JSON.
    python -m runtime.tools.bench.ceilings ingest NATS_URL DATA_DIR COUNT
        a raw fetch-and-insert loop: JetStream batches straight into a ClickHouse (chDB) table
        of the same schema, acked after the insert; prints the events/s it sustained.
    python -m runtime.tools.bench.ceilings echo NATS_URL COUNT
        the CPU unit (PERFORMANCE.md rule 2): COUNT sequential 100-byte requests to a raw nats-py
        echo responder in the same process; prints the CPU seconds one round trip costs.
    python -m runtime.tools.bench.ceilings postgres DSN COUNT PAUSE_SECONDS
        COUNT sequential `SELECT 1` round trips over asyncpg, each after a pause (0: back to
        back); prints the CPU seconds one costs. On this machine kind a round trip made after
        the process sat idle costs 4-9 times one made back to back (its own return from idle,
        whatever the other core does), and the saga's round trips are mostly of that kind.
"""

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable

import asyncpg
import nats
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from redis.asyncio import Redis

from contracts.catalog import GetProduct
from contracts.events import ALL_EVENTS, STREAM
from contracts.orders import GetOrder
from runtime.settings import Settings
from storage import orders
from storage import users as accounts
from storage.cache import ProductCache
from storage.sessions import SessionInfo, Sessions


async def echo_responder(nats_url: str, subject: str) -> None:
    nc = await nats.connect(nats_url)

    async def answer(msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe(subject, queue="raw", cb=answer)
    print("ready", flush=True)
    await asyncio.Event().wait()


_serving: set[asyncio.Task] = set()


def in_tasks(answer: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
    """A subscription callback answering each request on a task of its own, as the runtime
    serves them: one Redis or PostgreSQL wait would otherwise serialise them all."""
    async def handle(msg: Msg) -> None:
        task = asyncio.create_task(answer(msg))
        _serving.add(task)
        task.add_done_callback(_serving.discard)
    return handle


async def responder(nats_url: str, redis_url: str, prefix: str, subject: str) -> None:
    nc = await nats.connect(nats_url)
    cache = ProductCache(Redis.from_url(redis_url), prefix, ttl_seconds=3600)

    async def answer(msg) -> None:
        req = GetProduct.model_validate_json(msg.data)
        product = await cache.product(req.product_id)
        await msg.respond(product.model_dump_json().encode())

    await nc.subscribe(subject, queue="raw", cb=in_tasks(answer))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def signed_in_responder(nats_url: str, redis_url: str, prefix: str, dsn: str) -> None:
    nc = await nats.connect(nats_url)
    settings = Settings()
    sessions = Sessions(Redis.from_url(redis_url), prefix,
                        idle_seconds=settings.session_idle_seconds,
                        absolute_seconds=settings.session_absolute_seconds)
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)

    async def session_of(msg: Msg) -> SessionInfo:
        return await sessions.resolve(msg.headers["Authorization"].removeprefix("Bearer "))

    async def me(msg) -> None:
        user = await accounts.account(pool, (await session_of(msg)).user_id)
        await msg.respond(user.model_dump_json().encode())

    async def order(msg) -> None:
        req = GetOrder.model_validate_json(msg.data)
        session = await session_of(msg)
        found = await orders.view(pool, req.order_id)
        assert found.customer_id == session.user_id
        await msg.respond(found.model_dump_json().encode())

    await nc.subscribe("bench.raw.users.me", queue="raw", cb=in_tasks(me))
    await nc.subscribe("bench.raw.orders.get", queue="raw", cb=in_tasks(order))
    print("ready", flush=True)
    await asyncio.Event().wait()


async def ingest(nats_url: str, data_dir: str, count: int) -> None:
    from storage.analytics import AnalyticsStore

    store = AnalyticsStore.for_settings(None, data_dir, 400)
    await store.start()
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(ALL_EVENTS, durable="bench-raw-ingest", stream=STREAM)
    done, began = 0, None
    while done < count:
        try:
            batch = await sub.fetch(1_000, timeout=1)
        except (NatsTimeout, TimeoutError):
            continue
        began = began or time.perf_counter()
        rows = []
        for msg in batch:  # the envelope only: no contract validation, no dedupe query
            e = json.loads(msg.data)
            rows.append({"event_id": e["eventId"], "event": e["event"], "subject": msg.subject,
                         "timestamp": e["timestamp"].replace("T", " ").rstrip("Z")[:23],
                         "order_id": e.get("orderId", ""), "user_id": e.get("customerId", ""),
                         "amount": e.get("totalPrice", 0), "raw": msg.data.decode(),
                         "published_at": e["timestamp"].replace("T", " ").rstrip("Z")[:23]})
        body = "\n".join(json.dumps(r) for r in rows).encode()
        await store._run(store.backend.insert, f"{store.db}.events", body)
        await asyncio.gather(*(m.ack() for m in batch))
        done += len(batch)
    elapsed = time.perf_counter() - began
    print(json.dumps({"events": done, "seconds": elapsed}), flush=True)
    await nc.close()
    await store.close()


async def echo(nats_url: str, count: int) -> None:
    nc = await nats.connect(nats_url)

    async def respond(msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("bench.raw.echo", cb=respond)
    payload = b"x" * 100
    for _ in range(100):  # warm
        await nc.request("bench.raw.echo", payload, timeout=5)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(count):
        await nc.request("bench.raw.echo", payload, timeout=5)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(json.dumps({"round_trips": count, "cpu_seconds": cpu / count}), flush=True)
    await nc.close()


async def postgres(dsn: str, count: int, pause: float) -> None:
    conn = await asyncpg.connect(dsn)
    for _ in range(50):  # warm
        await conn.fetchval("SELECT 1")
    cpu = 0.0
    for _ in range(count):
        if pause:
            await asyncio.sleep(pause)  # the peer goes idle, as between an order's steps
        began = time.thread_time()
        await conn.fetchval("SELECT 1")
        cpu += time.thread_time() - began
    print(json.dumps({"round_trips": count, "pause": pause, "cpu_seconds": cpu / count}),
          flush=True)
    await conn.close()


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    if kind == "echo-responder":
        asyncio.run(echo_responder(*args))
    elif kind == "responder":
        asyncio.run(responder(*args))
    elif kind == "signed-in-responder":
        asyncio.run(signed_in_responder(*args))
    elif kind == "echo":
        asyncio.run(echo(args[0], int(args[1])))
    elif kind == "postgres":
        asyncio.run(postgres(args[0], int(args[1]), float(args[2])))
    else:
        asyncio.run(ingest(args[0], args[1], int(args[2])))
