"""What the catalog runs beside its handlers: the product cache client and the hold sweeper."""

import contextlib
import logging
from collections.abc import AsyncIterator

from faststream.context import ContextRepo
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from handlers.catalog import catalog
from storage import catalog as catalog_db
from storage.cache import ProductCache

log = logging.getLogger("atlantic.catalog")

SWEEP_BATCH = 200


@catalog.lifespan
@contextlib.asynccontextmanager
async def product_cache(context: ContextRepo) -> AsyncIterator[None]:
    """A Redis client of its own with short timeouts and no retries: a slow or absent Redis
    must cost a get one quick miss, not seconds of retrying. The cache times each command
    itself (storage.cache); a socket timeout (redis-py's default is 5 s) would run every send
    in a task of its own (asyncio.wait_for). With copies in this process, shared on the
    broker's connection with the other catalog processes."""
    settings = context.get("settings")
    timeout = settings.product_cache_timeout_seconds
    redis = Redis.from_url(settings.redis_url, socket_timeout=None,
                           socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
    cache = ProductCache(redis, settings.redis_prefix, ttl_seconds=settings.product_cache_seconds,
                         timeout_seconds=timeout,
                         local_seconds=settings.product_cache_local_seconds)
    if settings.product_cache_local_seconds:
        await cache.share(context.get("broker").connection)
    context.set_global("product_cache", cache)
    try:
        yield
    finally:
        await cache.close()


@catalog.periodic("hold_sweep_seconds")
async def sweep_once(context: ContextRepo) -> int:
    """Releases one batch of expired holds; returns how many products it touched."""
    cache = context.get("product_cache")
    async with context.get("pool").acquire() as db, db.transaction():
        touched = await catalog_db.release_expired(db, limit=SWEEP_BATCH)
    await cache.invalidate(*touched)  # also retries any invalidation Redis missed
    return len(touched)

