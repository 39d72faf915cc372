"""The product cache's reads (storage.cache), without servers: a Redis stand-in that answers
when told, so what goes to Redis together can be seen."""

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from storage.cache import ProductCache

pytestmark = pytest.mark.fast


class SlowRedis:
    """Answers each MGET when `answer` is called; remembers what each asked for."""

    def __init__(self, values: dict[str, bytes]):
        self.values, self.batches = values, []
        self.asked, self.release = asyncio.Event(), asyncio.Event()
        self.failure: Exception | None = None

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        self.batches.append(keys)
        self.asked.set()
        await self.release.wait()
        self.release.clear()
        if self.failure:
            raise self.failure
        return [self.values.get(k) for k in keys]

    async def asked_for(self) -> None:
        await self.asked.wait()
        self.asked.clear()

    def answer(self) -> None:
        self.release.set()


def key(product_id: str) -> str:
    return f"t:catalog:product:{product_id}"


async def test_reads_asked_while_one_is_on_its_way_go_together_in_the_next():
    redis = SlowRedis({key("a"): b'{"a":1}', key("c"): b'{"c":3}'})
    cache = ProductCache(redis, "t:", ttl_seconds=60)

    first = asyncio.create_task(cache.stored("a"))
    await redis.asked_for()
    later = [asyncio.create_task(cache.stored(p)) for p in ("b", "c", "a")]
    redis.answer()
    await redis.asked_for()
    redis.answer()

    assert await first == b'{"a":1}'
    assert [await t for t in later] == [None, b'{"c":3}', b'{"a":1}']
    assert redis.batches == [[key("a")], [key("b"), key("c"), key("a")]]


async def test_a_failed_read_is_a_miss_for_every_request_in_its_batch():
    redis = SlowRedis({key("a"): b'{"a":1}'})
    redis.failure = RedisConnectionError("gone")
    cache = ProductCache(redis, "t:", ttl_seconds=60)

    reads = [asyncio.create_task(cache.stored(p)) for p in ("a", "b")]
    await redis.asked_for()
    redis.answer()

    assert [await r for r in reads] == [None, None]
    assert redis.batches == [[key("a"), key("b")]]


async def test_a_read_redis_does_not_answer_in_time_is_a_miss():
    cache = ProductCache(SlowRedis({}), "t:", ttl_seconds=60, timeout_seconds=0.01)

    assert await cache.stored("a") is None


async def test_reads_still_waiting_when_the_sender_stops_are_answered():
    redis = SlowRedis({})
    cache = ProductCache(redis, "t:", ttl_seconds=60)
    read = cache._read(key("a"))
    await redis.asked_for()
    queued = cache._read(key("b"))

    cache._sender.cancel()

    for waiting in (read, queued):
        with pytest.raises(RedisError):
            await waiting
