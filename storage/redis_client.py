"""The Redis client behind sessions and sign-in limits, and what its absence means to a caller.

Sessions and limits cannot be served without Redis, so a Redis that does not answer is a 503
`unavailable` (never a 401 that tells clients they were signed out, nor a 500). After Redis
restarts, every pooled connection is dead: a command that fails on one is retried at once on a
fresh connection, so the first request after an outage does not fail on a stale socket.
"""

import contextlib
from collections.abc import Iterator

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from contracts.errors import Unavailable

# redis-py's default retries ten times with backoff up to a second: seconds per request while
# Redis is down. Two quick retries cover a stale connection, and a down Redis fails fast.
OPTIONS = {
    "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=2,
                   supported_errors=(RedisConnectionError, RedisTimeout, OSError)),
    "socket_connect_timeout": 1.0,  # an unreachable host is an error, not a hang
    "health_check_interval": 30,  # a connection idle this long is pinged before use
}


def connect(url: str) -> Redis:
    return Redis.from_url(url, **OPTIONS)


@contextlib.contextmanager
def required(what: str) -> Iterator[None]:
    """Turns Redis failures inside into a 503 naming what is unavailable."""
    try:
        yield
    except RedisError as exc:
        raise Unavailable(f"{what} are unavailable: Redis does not answer; retry shortly") from exc
