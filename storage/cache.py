"""The product cache in Redis (cache-aside). Redis is an optimisation here, never a source of
truth: when it cannot be reached every read is a miss, so readers fall through to PostgreSQL.

Never stale: an invalidation that fails (Redis down) is remembered and retried before this
process reads from the cache again, and until it succeeds those products are not served from
or written to the cache. Entries also expire after a short TTL, which bounds what another
process could see if this one died before Redis came back.

An entry is the product's reply as encoded JSON, so a hit can be sent as stored (`stored`).
Reads go to Redis in batches, one MGET at a time: a read that finds none on its way starts one
at once; reads asked for while one is on its way go together in the next, as soon as it is
back (group commit). One round trip (a write and a read on the socket, the dearest part of a
cached read on these machines) then serves every request that arrived meanwhile, and a lone
request waits for nothing. Each read is still sent after its request arrived, so a read never
returns what Redis held before an invalidation its caller had seen finish.
A slow Redis counts as a miss after `timeout_seconds`, measured here rather than by redis-py's
socket timeout, which wraps every send and read in a task of its own.
"""

import asyncio
import logging

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from contracts.catalog import Product

log = logging.getLogger("atlantic.cache")

LOOKUPS = Counter("atlantic_cache_lookups", "Product cache reads, by result: hit, or miss (not"
                  " there, or Redis away or slow)", ["cache", "result"])
_HIT, _MISS = LOOKUPS.labels("product", "hit"), LOOKUPS.labels("product", "miss")


class ProductCache:
    def __init__(self, redis: Redis, prefix: str, *, ttl_seconds: int,
                 timeout_seconds: float | None = None):
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._timeout = timeout_seconds
        self._pending: set[str] = set()  # products whose invalidation has not reached Redis
        self._reads: list[tuple[str, asyncio.Future[bytes | None]]] = []  # not yet sent
        self._sender: asyncio.Task[None] | None = None  # sends batches while reads wait

    def _key(self, product_id: str) -> str:
        return f"{self._prefix}catalog:product:{product_id}"

    async def stored(self, product_id: str) -> bytes | None:
        """The product's reply JSON as cached, or None on a miss (or with Redis away)."""
        if not await self.retry_invalidations():
            _MISS.inc()
            return None
        try:
            found = await self._read(self._key(product_id))
        except RedisError as exc:
            log.warning("product cache unavailable, reading PostgreSQL: %s", exc)
            found = None
        (_MISS if found is None else _HIT).inc()
        return found

    async def product(self, product_id: str) -> Product | None:
        cached = await self.stored(product_id)
        return Product.model_validate_json(cached) if cached else None

    def _read(self, key: str) -> asyncio.Future[bytes | None]:
        reply = asyncio.get_running_loop().create_future()
        self._reads.append((key, reply))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_reads())
        return reply

    async def _send_reads(self) -> None:
        try:
            while self._reads:
                reads, self._reads = self._reads, []
                await self._send(reads)
        finally:
            self._sender = None
            reads, self._reads = self._reads, []  # left waiting when the sender was cancelled
            _answer(reads, RedisError("the product cache is closing"))

    async def _send(self, reads: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                values = await self._redis.mget([key for key, _ in reads])
        except BaseException as exc:  # whatever happens, every read waiting on it is answered
            if isinstance(exc, TimeoutError):
                _answer(reads, RedisTimeout(f"no answer within {self._timeout} s"))
            else:
                _answer(reads, exc if isinstance(exc, RedisError) else RedisError(repr(exc)))
            if not isinstance(exc, Exception):
                raise  # cancelled: the app is stopping
            return
        for (_, reply), value in zip(reads, values, strict=True):
            if not reply.done():  # its request may have been cancelled meanwhile
                reply.set_result(value)

    async def put(self, product: Product) -> None:
        if product.product_id in self._pending:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(self._key(product.product_id), product.model_dump_json(),
                                      ex=self._ttl)
        except (RedisError, TimeoutError) as exc:
            log.warning("product cache unavailable, not caching: %s", exc)

    async def invalidate(self, *product_ids: str) -> None:
        """Drops entries after their rows changed; call after the commit."""
        self._pending.update(product_ids)
        await self.retry_invalidations()

    async def retry_invalidations(self) -> bool:
        """Sends the invalidations Redis has not seen yet; True when none is left."""
        if not self._pending:
            return True
        pending = list(self._pending)
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.delete(*(self._key(p) for p in pending))
        except (RedisError, TimeoutError) as exc:
            log.warning("product cache invalidation of %d products failed, will retry: %s",
                        len(pending), exc)
            return False
        self._pending.difference_update(pending)
        return not self._pending

    async def close(self) -> None:
        await self._redis.aclose()


def _answer(reads: list[tuple[str, asyncio.Future[bytes | None]]], failure: Exception) -> None:
    for _, reply in reads:
        if not reply.done():
            reply.set_exception(failure)
