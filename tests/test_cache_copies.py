"""The product cache across catalog processes (storage.cache), on real NATS and Redis: two
caches, as two catalog processes hold them, each on its own connection. Their own copies of
cached replies (`share`), and a miss's fill that a change in another process crossed.

A stand-in catalog answers gets through one cache or the other (cache, else its "table", which
it then caches in Redis) and changes a product through either (the table, then `invalidate`,
then the reply on the same connection, as a handler does). A slow Redis stand-in (test_cache)
holds a read open where an invalidation must cross it.
"""

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import nats
import pytest
from redis.asyncio import Redis
from support import RUN_ID, eventually
from test_cache import SlowRedis

from contracts.catalog import CACHE_INVALIDATIONS, Product
from runtime.tools.services import NatsServer, free_port
from storage.cache import ProductCache

_names = itertools.count()


class Catalog:
    """A stand-in catalog process: its connection, its cache, and gets and changes answered
    on subjects of its own."""

    table: dict[str, bytes] = {}  # the products' "rows", shared like a database

    def __init__(self, nc: nats.NATS, cache: ProductCache, name: str):
        self.nc, self.cache, self.name = nc, cache, name

    @classmethod
    async def start(cls, url: str, redis: Redis, *, local_seconds: float = 60) -> "Catalog":
        nc = await nats.connect(url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
        cache = ProductCache(redis, f"atlantic-test-{RUN_ID}:copies:", ttl_seconds=60,
                             timeout_seconds=2, local_seconds=local_seconds)
        await cache.share(nc)
        catalog = cls(nc, cache, f"test.{RUN_ID}.copies.{next(_names)}")
        await nc.subscribe(f"{catalog.name}.get", cb=catalog._get)
        await nc.subscribe(f"{catalog.name}.change", cb=catalog._change)
        # Answered only once the server has taken the subscriptions sent before it (nc.flush
        # writes its PING ahead of commands still buffered): nobody then asks too early.
        await nc.subscribe(f"{catalog.name}.ready", cb=catalog._ready)
        await nc.request(f"{catalog.name}.ready", timeout=5)
        return catalog

    async def _ready(self, msg) -> None:
        await msg.respond(b"")

    async def _get(self, msg) -> None:
        product_id = msg.data.decode()
        body = await self.cache.stored(product_id)
        if body is None:
            body = self.table[product_id]
            await self.cache._redis.set(self.cache._key(product_id), body)
        await msg.respond(body)

    async def _change(self, msg) -> None:
        product_id, body = msg.data.decode().split("=")
        self.table[product_id] = body.encode()
        await self.cache.invalidate(product_id)
        await msg.respond(b"changed")

    async def close(self) -> None:
        await self.nc.close()


@pytest.fixture
async def redis(settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def caller(nats_server) -> AsyncIterator[nats.NATS]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


async def get(caller: nats.NATS, catalog: Catalog, product_id: str) -> bytes:
    return (await caller.request(f"{catalog.name}.get", product_id.encode(), timeout=5)).data


async def change(caller: nats.NATS, catalog: Catalog, product_id: str, body: str) -> None:
    await caller.request(f"{catalog.name}.change", f"{product_id}={body}".encode(), timeout=5)


async def test_a_change_through_one_process_is_seen_at_once_through_another(
        nats_server, redis, caller):
    one, other = [await Catalog.start(nats_server.url, redis) for _ in range(2)]
    product_id = f"p-{next(_names)}"
    Catalog.table[product_id] = b"v0"
    try:
        for n in range(30):
            for catalog in (one, other, other):  # the last read is served from its copy
                assert await get(caller, catalog, product_id) == f"v{n}".encode()

            writer, reader = (one, other) if n % 2 else (other, one)
            await change(caller, writer, product_id, f"v{n + 1}")

            assert await get(caller, reader, product_id) == f"v{n + 1}".encode()
    finally:
        await one.close()
        await other.close()


async def test_a_copy_is_served_without_redis_until_it_expires(nats_server, redis, caller):
    catalog = await Catalog.start(nats_server.url, redis, local_seconds=0.5)
    product_id = f"p-{next(_names)}"
    Catalog.table[product_id] = b"before"
    try:
        await get(caller, catalog, product_id)  # a miss: now in Redis
        await get(caller, catalog, product_id)  # a Redis hit: now copied
        # Changed behind the caches' backs (no invalidation), as a lost one would leave it.
        await redis.set(catalog.cache._key(product_id), b"after")

        assert await get(caller, catalog, product_id) == b"before"
        await eventually(lambda: _equals(get(caller, catalog, product_id), b"after"))
    finally:
        await catalog.close()


async def _equals(reply, expected: bytes) -> bool:
    return await reply == expected


async def test_a_read_that_an_invalidation_crossed_leaves_no_copy(nats_server, redis):
    writer = await Catalog.start(nats_server.url, redis)
    product_id = f"p-{next(_names)}"
    slow = SlowRedis({f"t:catalog:product:{product_id}": b"old"})
    nc = await nats.connect(nats_server.url)
    reader = ProductCache(slow, "t:", ttl_seconds=60, local_seconds=60)
    await reader.share(nc)
    try:
        read = asyncio.create_task(reader.stored(product_id))
        await slow.asked_for()
        await writer.cache.invalidate(product_id)
        await writer.nc.flush()  # the server has routed the invalidation to the reader...
        await nc.flush()  # ...and the reader has taken it in, ahead of this PONG
        slow.answer()
        assert await read == b"old"  # read before the change was known: no promise broken

        slow.values[f"t:catalog:product:{product_id}"] = b"new"
        again = asyncio.create_task(reader.stored(product_id))
        await asyncio.wait_for(slow.asked_for(), 5)  # to Redis again: no copy was kept
        slow.answer()

        assert await again == b"new"
    finally:
        await writer.close()
        await nc.close()


async def test_after_a_reconnect_no_copy_from_before_is_served(tmp_path: Path, redis):
    server = NatsServer(free_port(), tmp_path / "nats").start()
    catalog = await Catalog.start(server.url, redis)
    own_caller = await nats.connect(server.url, reconnect_time_wait=0.1,
                                    max_reconnect_attempts=-1)
    product_id = f"p-{next(_names)}"
    Catalog.table[product_id] = b"before"
    try:
        await get(own_caller, catalog, product_id)
        assert await get(own_caller, catalog, product_id) == b"before"  # copied

        server.stop()
        # Changed while this process was away: whatever invalidation was sent, it missed it.
        await redis.set(catalog.cache._key(product_id), b"meanwhile")
        server.start()
        await eventually(lambda: _reconnected(catalog.nc, own_caller))
        await catalog.nc.request(f"{catalog.name}.ready", timeout=5)  # resubscribed

        assert await get(own_caller, catalog, product_id) == b"meanwhile"
    finally:
        await catalog.close()
        await own_caller.close()
        server.stop()


async def _reconnected(*connections: nats.NATS) -> bool:
    return all(nc.is_connected and nc.stats["reconnects"] for nc in connections)


def product(product_id: str, price: str) -> Product:
    now = datetime.now(UTC)
    return Product(product_id=product_id, sku="SKU-1", name="Tea", description="",
                   price=Decimal(price), category="drinks", active=True, available=3,
                   created_at=now, updated_at=now)


async def test_a_miss_that_a_change_elsewhere_crossed_is_not_cached(nats_server, redis):
    reader, writer = [await Catalog.start(nats_server.url, redis) for _ in range(2)]
    product_id = f"p-{next(_names)}"
    try:
        assert await reader.cache.stored(product_id) is None
        version = await reader.cache.version(product_id)
        # The reader reads the row from PostgreSQL here; meanwhile another process commits a
        # change and invalidates, and only then does the reader's fill reach Redis.
        await writer.cache.invalidate(product_id)
        await reader.cache.put(product(product_id, "1.00"), version)

        assert await writer.cache.stored(product_id) is None  # the old row was kept out

        fresh = product(product_id, "2.00")
        version = await reader.cache.version(product_id)  # a miss nothing crossed is cached
        await reader.cache.put(fresh, version)
        assert await writer.cache.stored(product_id) == fresh.model_dump_json().encode()
    finally:
        await reader.close()
        await writer.close()


@pytest.mark.parametrize("body", [b"not json", b'{"productIds": ["x"]}', b'[{"id": "x"}]'])
async def test_an_invalidation_it_cannot_read_drops_every_copy(nats_server, redis, caller, body):
    catalog = await Catalog.start(nats_server.url, redis)
    product_id = f"p-{next(_names)}"
    Catalog.table[product_id] = b"before"
    try:
        await get(caller, catalog, product_id)
        assert await get(caller, catalog, product_id) == b"before"  # copied
        await redis.set(catalog.cache._key(product_id), b"after")

        await caller.publish(CACHE_INVALIDATIONS, body)
        await caller.flush()  # the server has routed it, ahead of the request below

        assert await get(caller, catalog, product_id) == b"after"
    finally:
        await catalog.close()
