"""Sign-in limits in Redis as OWASP describes them, through the `limits` library (moving
windows), with device tokens ("Slow Down Online Guessing Attacks with Device Cookies").

- Only failures stay counted: an attempt is charged to its counter as it starts (so a burst of
  parallel guesses cannot all slip past a check), and a success clears that counter.
- Per account, for clients the account does not know: `attempts` failures within the window
  refuse further sign-ins from unknown clients until the window frees.
- Per device: a successful sign-in returns a device token, bound to that email. A sign-in that
  sends it is counted against that device alone, so a stranger guessing at the account cannot
  lock out the owner's own devices; a stolen device token still gets only `attempts` guesses.
- Across accounts (password spraying): `global_failures` failures from unknown clients within
  the window refuse every unknown client's sign-in until it frees; known devices still sign in.
"""

import hashlib
import secrets
import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis

from storage import redis_client

DEVICE_TOKEN_BYTES = 32
DEVICE_SECONDS = 90 * 24 * 60 * 60  # a device stays known this long after its last sign-in


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    email: str
    counter: tuple[str, ...]  # what this attempt is charged to: a device, or the account
    device_token: str | None  # the client's, when it is known for this email
    wait: float | None  # seconds until a sign-in may be tried again; None: go ahead


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

class LoginLimiter:
    def __init__(self, redis: Redis, redis_url: str, prefix: str, *, attempts: int,
                 window_seconds: int, global_failures: int):
        storage = RedisStorage(
            f"async+{redis_url}", implementation="redispy", key_prefix=f"{prefix}limits",
            **redis_client.OPTIONS)
        self._redis = redis
        self._prefix = prefix
        self._limiter = MovingWindowRateLimiter(storage)
        self._item = RateLimitItemPerSecond(attempts, window_seconds)
        self._global = RateLimitItemPerSecond(global_failures, window_seconds)

    def _device_key(self, device_token: str) -> str:
        return f"{self._prefix}login-device:{_hash(device_token)}"

    async def _known_device(self, email: str, device_token: str | None) -> bool:
        if device_token is None:
            return False
        owner = await self._redis.get(self._device_key(device_token))
        return owner is not None and owner.decode() == email

    async def _wait(self, item: RateLimitItemPerSecond, *counter: str) -> float:
        stats = await self._limiter.get_window_stats(item, *counter)
        return max(0.0, stats.reset_time - time.time())

    async def begin(self, email: str, device_token: str | None) -> LoginAttempt:
        """Charges one attempt to the device (when known for this email) or to the account."""
        with redis_client.required("sign-in limits"):
            if await self._known_device(email, device_token):
                counter = ("login-device", _hash(device_token or ""))
            else:
                device_token, counter = None, ("login", email)
                if not await self._limiter.test(self._global, "login-failures"):
                    wait = await self._wait(self._global, "login-failures")
                    return LoginAttempt(email, counter, None, wait)
            if await self._limiter.hit(self._item, *counter):
                return LoginAttempt(email, counter, device_token, None)
            wait = await self._wait(self._item, *counter)
            return LoginAttempt(email, counter, device_token, wait)

    async def failed(self, attempt: LoginAttempt) -> None:
        """A wrong password: it stays charged; from an unknown client, it counts globally too."""
        with redis_client.required("sign-in limits"):
            if attempt.device_token is None:
                await self._limiter.hit(self._global, "login-failures")

    async def succeeded(self, attempt: LoginAttempt) -> str:
        """The right password: the counter is cleared, and the device token to send next time
        (the client's own, renewed, or a new one)."""
        with redis_client.required("sign-in limits"):
            await self._limiter.clear(self._item, *attempt.counter)
            device_token = attempt.device_token or secrets.token_urlsafe(DEVICE_TOKEN_BYTES)
            await self._redis.set(self._device_key(device_token), attempt.email,
                                  ex=DEVICE_SECONDS)
            return device_token
