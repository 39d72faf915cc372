"""The product cache in Redis (cache-aside). Redis is an optimisation here, never a source of
truth: when it cannot be reached every read is a miss, so readers fall through to PostgreSQL.

Never stale: an invalidation that fails (Redis down) is remembered and retried before this
process reads from the cache again, and until it succeeds those products are not served from
or written to the cache. Entries also expire after a short TTL, which bounds what another
process could see if this one died before Redis came back.
"""

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from contracts.catalog import Product

log = logging.getLogger("atlantic.cache")


class ProductCache:
    def __init__(self, redis: Redis, prefix: str, *, ttl_seconds: int):
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._pending: set[str] = set()  # products whose invalidation has not reached Redis

    def _key(self, product_id: str) -> str:
        return f"{self._prefix}catalog:product:{product_id}"

    async def product(self, product_id: str) -> Product | None:
        if not await self.retry_invalidations():
            return None
        try:
            cached = await self._redis.get(self._key(product_id))
        except RedisError as exc:
            log.warning("product cache unavailable, reading PostgreSQL: %s", exc)
            return None
        return Product.model_validate_json(cached) if cached else None

    async def put(self, product: Product) -> None:
        if product.product_id in self._pending:
            return
        try:
            await self._redis.set(self._key(product.product_id), product.model_dump_json(),
                                  ex=self._ttl)
        except RedisError as exc:
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
            await self._redis.delete(*(self._key(p) for p in pending))
        except RedisError as exc:
            log.warning("product cache invalidation of %d products failed, will retry: %s",
                        len(pending), exc)
            return False
        self._pending.difference_update(pending)
        return not self._pending

    async def close(self) -> None:
        await self._redis.aclose()
