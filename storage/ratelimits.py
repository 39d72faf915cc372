"""Per-account login limits in Redis, through the `limits` library (a moving window)."""

import time

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from storage import redis_client


class LoginLimiter:
    def __init__(self, redis_url: str, prefix: str, *, attempts: int, window_seconds: int):
        storage = RedisStorage(
            f"async+{redis_url}", implementation="redispy", key_prefix=f"{prefix}limits",
            **redis_client.OPTIONS)
        self._limiter = MovingWindowRateLimiter(storage)
        self._item = RateLimitItemPerSecond(attempts, window_seconds)

    async def attempt(self, account: str) -> float | None:
        """Counts one login attempt; None when allowed, else the seconds until the next is."""
        with redis_client.required("sign-in limits"):
            if await self._limiter.hit(self._item, "login", account):
                return None
            stats = await self._limiter.get_window_stats(self._item, "login", account)
        return max(0.0, stats.reset_time - time.time())
