"""The product cache in Redis (cache-aside). Redis is an optimisation here, never a source of
truth: when it cannot be reached every read is a miss, so readers fall through to PostgreSQL.

Never stale: an invalidation that fails (Redis down) is remembered and retried before this
process reads from the cache again, and until it succeeds those products are not served from
or written to the cache. Entries also expire after a short TTL, which bounds what another
process could see if this one died before Redis came back. A miss fills the cache only if no
invalidation came between its read of PostgreSQL and its write to Redis, in any process: each
invalidation moves the product's version on in Redis, and a fill is written only while the
version is the one its caller read before reading the product (`version`, then `put`).

An entry is the product's reply as encoded JSON, so a hit can be sent as stored (`stored`).
Reads go to Redis in batches, one MGET at a time: a read that finds none on its way starts one
at once; reads asked for while one is on its way go together in the next, as soon as it is
back (group commit). One round trip (a write and a read on the socket, the dearest part of a
cached read on these machines) then serves every request that arrived meanwhile, and a lone
request waits for nothing. Each read is still sent after its request arrived, so a read never
returns what Redis held before an invalidation its caller had seen finish.
A slow Redis counts as a miss after `timeout_seconds`, measured here rather than by redis-py's
socket timeout, which wraps every send and read in a task of its own.

Shared (`share`), a catalog process also keeps a copy of each reply it read from Redis, for
`local_seconds`, so that a hit costs no round trip at all (the Redis read was most of a cached
read's time at one request in flight: BENCHMARKS.md, issue 14). Copies stay true across
processes: whoever invalidates a product deletes its Redis entry first, then tells every catalog
process on NATS (CACHE_INVALIDATIONS), then replies to its caller or publishes what the change
led to. Each process drops its copy on the message. A NATS server delivers what one connection
sent in the order it sent it, so a process gets the invalidation before any request sent by
someone who saw the change, and asyncio runs the invalidation's callback before that request's.
On a NATS cluster that holds when the writer, or the one who saw the change, shares a server
with the reader; otherwise the invalidation and the request take different routes, and the
request could in principle overtake it by less than a round trip between servers.
A copy is only taken from a Redis read during which no invalidation arrived, so no copy
outlives the entry it was read from. After a reconnect (invalidations may have been missed while
away) every copy is dropped; `local_seconds` bounds what anything else could leave behind. A
process whose NATS user may not publish and receive invalidations keeps no copies at all.
"""

import asyncio
import json
import logging
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from contracts.catalog import CACHE_INVALIDATIONS, Product

log = logging.getLogger("atlantic.cache")

# Each product's entry deleted and its version moved on, in one round trip.
_INVALIDATE = """
for i = 1, #KEYS, 2 do
  redis.call('DEL', KEYS[i])
  redis.call('INCR', KEYS[i + 1])
  redis.call('EXPIRE', KEYS[i + 1], ARGV[1])
end
"""
# The entry written only if the version is still the one read before the product was.
_FILL = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""

LOOKUPS = Counter("atlantic_cache_lookups", "Product cache reads, by result: hit, or miss (not"
                  " there, or Redis away or slow)", ["cache", "result"])
_HIT, _MISS = LOOKUPS.labels("product", "hit"), LOOKUPS.labels("product", "miss")


class ProductCache:
    def __init__(self, redis: Redis, prefix: str, *, ttl_seconds: int,
                 timeout_seconds: float | None = None, local_seconds: float = 5,
                 local_entries: int = 10_000):
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._timeout = timeout_seconds
        self._pending: set[str] = set()  # products whose invalidation has not reached Redis
        self._reads: list[tuple[str, asyncio.Future[bytes | None]]] = []  # not yet sent
        self._sender: asyncio.Task[None] | None = None  # sends batches while reads wait
        # This process's copies (once shared): product id -> (monotonic expiry, reply JSON).
        self._copies: dict[str, tuple[float, bytes]] = {}
        self._local_seconds, self._local_entries = local_seconds, local_entries
        self._peers: NATS | None = None  # the connection invalidations travel on
        self._reconnects = 0  # the connection's reconnects when the copies were taken
        self._drops = 0  # invalidations seen: a copy read across one is not kept

    async def share(self, nc: NATS, *, within: float = 2.0) -> bool:
        """Keeps copies in this process, dropped whenever any catalog process invalidates.
        Only once a message of its own came back: a connection that may not publish or receive
        invalidations (a NATS user without the permission) keeps no copies (False)."""
        heard = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            heard.set()
            await self._invalidated(msg)

        # Unbounded: nats-py drops a subscription's messages past its pending limits.
        subscription = await nc.subscribe(CACHE_INVALIDATIONS, cb=on_message,
                                          pending_msgs_limit=0, pending_bytes_limit=0)
        await nc.publish(CACHE_INVALIDATIONS, b"[]")
        try:
            async with asyncio.timeout(within):
                await heard.wait()
        except TimeoutError:
            log.error("invalidations do not reach this process over NATS (may its user publish"
                      " and subscribe to %s?): no copies kept here", CACHE_INVALIDATIONS)
            await subscription.unsubscribe()
            return False
        self._peers, self._reconnects = nc, nc.stats["reconnects"]
        return True

    def _key(self, product_id: str) -> str:
        return f"{self._prefix}catalog:product:{product_id}"

    def _version_key(self, product_id: str) -> str:
        return f"{self._prefix}catalog:product-version:{product_id}"

    async def stored(self, product_id: str) -> bytes | None:
        """The product's reply JSON as cached, or None on a miss (or with Redis away)."""
        if (copy := self._copy(product_id)) is not None:
            _HIT.inc()
            return copy
        if not await self.retry_invalidations():
            _MISS.inc()
            return None
        drops = self._drops
        try:
            found = await self._read(self._key(product_id))
        except RedisError as exc:
            log.warning("product cache unavailable, reading PostgreSQL: %s", exc)
            found = None
        (_MISS if found is None else _HIT).inc()
        if found is not None and drops == self._drops:
            self._keep(product_id, found)
        return found

    def _copy(self, product_id: str) -> bytes | None:
        if not self._copies or not self._in_step():
            return None
        expires, body = self._copies.get(product_id, (0.0, b""))
        if expires > time.monotonic():
            return body
        self._copies.pop(product_id, None)
        return None

    def _keep(self, product_id: str, body: bytes) -> None:
        if self._peers is None or not self._in_step():
            return
        if len(self._copies) >= self._local_entries and product_id not in self._copies:
            del self._copies[next(iter(self._copies))]  # the oldest taken
        self._copies[product_id] = (time.monotonic() + self._local_seconds, body)

    def _in_step(self) -> bool:
        """False, with every copy dropped, once the connection has been lost and made again:
        invalidations sent meanwhile never came."""
        assert self._peers is not None
        if (reconnects := self._peers.stats["reconnects"]) == self._reconnects:
            return True
        self._reconnects = reconnects
        self._drop(None)
        return False

    def _drop(self, product_ids: list[str] | None) -> None:
        """Drops the copies of these products (None: of all)."""
        self._drops += 1
        if product_ids is None:
            self._copies.clear()
        for product_id in product_ids or ():
            self._copies.pop(product_id, None)

    async def _invalidated(self, msg: Msg) -> None:
        try:
            product_ids = json.loads(msg.data)
        except ValueError:
            product_ids = None
        if not (isinstance(product_ids, list) and all(isinstance(p, str) for p in product_ids)):
            product_ids = None  # not a list of ids: every copy goes
        self._drop(product_ids)

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

    async def version(self, product_id: str) -> str | None:
        """The product's version in the cache, to read after a miss and before the product
        itself, and to hand to `put`; None when Redis cannot say."""
        try:
            async with asyncio.timeout(self._timeout):
                found = await self._redis.get(self._version_key(product_id))
        except (RedisError, TimeoutError) as exc:
            log.warning("product cache unavailable, not caching: %s", exc)
            return None
        return found.decode() if found else ""

    async def put(self, product: Product, version: str | None) -> None:
        """Caches the product read after `version`, unless it has been invalidated since."""
        if version is None or product.product_id in self._pending:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.eval(
                    _FILL, 2, self._key(product.product_id),
                    self._version_key(product.product_id), version,
                    product.model_dump_json(), self._ttl)
        except (RedisError, TimeoutError) as exc:
            log.warning("product cache unavailable, not caching: %s", exc)

    async def invalidate(self, *product_ids: str) -> None:
        """Drops entries after their rows changed; call after the commit, and before replying
        or publishing anything that tells of the change."""
        self._pending.update(product_ids)
        await self.retry_invalidations()
        if not product_ids:  # a sweep that changed nothing: only the retry above
            return
        # This process's copies once Redis's entries are gone: a copy read meanwhile goes too.
        self._drop(list(product_ids))
        # Then the other processes: one that drops its copy must find Redis's entry gone too.
        if self._peers is not None:
            try:
                await self._peers.publish(CACHE_INVALIDATIONS, json.dumps(product_ids).encode())
            except Exception as exc:  # closed: its copies expire within local_seconds
                log.warning("could not tell the catalog processes of %d invalidations: %s",
                            len(product_ids), exc)

    async def retry_invalidations(self) -> bool:
        """Sends the invalidations Redis has not seen yet; True when none is left."""
        if not self._pending:
            return True
        pending = list(self._pending)
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.eval(
                    _INVALIDATE, 2 * len(pending),
                    *(key for p in pending for key in (self._key(p), self._version_key(p))),
                    self._ttl)
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
