"""Session tokens in Redis, stored by their SHA-256 so a leaked Redis dump holds no usable token.

A session has an idle expiry (the key's TTL, renewed on use) and an absolute expiry (kept in the
record); both are fixed when the session starts, so changing the settings affects new sessions.
Each user's live sessions are indexed so "log out everywhere" can end them all.

A small marker remembers each token issued for twice its absolute lifetime, so a token that
expired or was ended is told apart from one that never existed (a client signs in again after
the first; the second is a bug or a forgery). Only a failed resolve reads it.

Resolving a token is on the path of every signed-in request, so it is one round trip: a Lua
script reads the record, checks the absolute expiry and renews the idle one in Redis (it was
HGETALL then EXPIRE, two round trips of ~140 us of client CPU each on these machines).
"""

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from storage.redis_client import required


@dataclass(frozen=True, slots=True)
class SessionInfo:
    user_id: str
    role: str
    token_hash: str


TOKEN_BYTES = 32
# What secrets.token_urlsafe(TOKEN_BYTES) makes: 43 characters of base64url.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# KEYS[1]: the session; ARGV[1]: now (Unix seconds). The user and role of a live session, its
# idle expiry renewed (never past its absolute one); nothing for an unknown or expired one.
_RESOLVE = """
local r = redis.call('HMGET', KEYS[1], 'user_id', 'role', 'expires_at', 'idle_seconds')
if not r[1] then return false end
local remaining = tonumber(r[3]) - tonumber(ARGV[1])
if remaining <= 0 then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('EXPIRE', KEYS[1], math.max(1, math.floor(math.min(tonumber(r[4]), remaining))))
return {r[1], r[2]}
"""


class Sessions:
    def __init__(self, redis: Redis, prefix: str, *, idle_seconds: int, absolute_seconds: int):
        self._redis = redis
        self._prefix = prefix
        self.idle_seconds = idle_seconds
        self.absolute_seconds = absolute_seconds
        self._resolve = redis.register_script(_RESOLVE)

    def _key(self, token_hash: str) -> str:
        return f"{self._prefix}session:{token_hash}"

    def _issued_key(self, token_hash: str) -> str:
        return f"{self._prefix}session-issued:{token_hash}"

    def _user_key(self, user_id: str) -> str:
        return f"{self._prefix}user-sessions:{user_id}"

    async def start(self, user_id: str, role: str) -> tuple[str, float]:
        """A new token (256 random bits) and its absolute expiry as a Unix time."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        token_hash = _hash(token)
        expires_at = time.time() + self.absolute_seconds
        with required("sessions"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(token_hash), mapping={
                    "user_id": user_id, "role": role, "expires_at": repr(expires_at),
                    "idle_seconds": self.idle_seconds})
                pipe.expire(self._key(token_hash), min(self.idle_seconds, self.absolute_seconds))
                pipe.set(self._issued_key(token_hash), 1, ex=2 * self.absolute_seconds)
                pipe.sadd(self._user_key(user_id), token_hash)
                pipe.expire(self._user_key(user_id), self.absolute_seconds)
                await pipe.execute()
        return token, expires_at

    async def resolve(self, token: str) -> SessionInfo | None:
        """The live session behind a token, renewing its idle expiry; None when there is none."""
        token_hash = _hash(token)
        with required("sessions"):
            found = await self._resolve(keys=[self._key(token_hash)], args=[repr(time.time())])
        if not found:
            return None
        user_id, role = found
        return SessionInfo(user_id.decode(), role.decode(), token_hash)

    async def was_issued(self, token: str) -> bool:
        """Whether this service issued the token (live, expired or ended), as far as it
        remembers; one that is not even shaped like a token is not looked up."""
        if not _TOKEN_SHAPE.fullmatch(token):
            return False
        with required("sessions"):
            return bool(await self._redis.exists(self._issued_key(_hash(token))))

    async def end(self, session: SessionInfo) -> int:
        with required("sessions"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(session.token_hash))
                pipe.srem(self._user_key(session.user_id), session.token_hash)
                deleted, _ = await pipe.execute()
        return int(deleted)

    async def end_all(self, user_id: str) -> int:
        with required("sessions"):
            token_hashes = await self._redis.smembers(self._user_key(user_id))
            keys = [self._key(h.decode()) for h in token_hashes]
            async with self._redis.pipeline(transaction=True) as pipe:
                if keys:
                    pipe.delete(*keys)
                pipe.delete(self._user_key(user_id))
                results = await pipe.execute()
        return int(results[0]) if keys else 0
