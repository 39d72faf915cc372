"""What handlers receive by injection. The runtime puts the shared clients in the app context."""

from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
from faststream import Context, Depends
from faststream.nats.annotations import NatsMessage

from contracts.errors import Forbidden, Unauthorized
from storage.ratelimits import LoginLimiter
from storage.sessions import SessionInfo, Sessions


async def _connection(
    pool: Annotated[asyncpg.Pool, Context("pool")],
) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as connection:
        yield connection


Db = Annotated[asyncpg.Connection, Depends(_connection, cast=False)]
# For a handler that waits on another set before it writes: holding a connection across that
# wait could leave every connection waiting on a set that needs one.
Pool = Annotated[asyncpg.Pool, Context("pool")]
SessionStore = Annotated[Sessions, Context("sessions")]
LoginLimits = Annotated[LoginLimiter, Context("login_limiter")]


async def _current_session(message: NatsMessage, sessions: SessionStore) -> SessionInfo:
    scheme, _, token = (message.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    session = await sessions.resolve(token.strip())
    if session is None:
        raise Unauthorized("the session has expired or was ended", code="session_expired")
    return session


CurrentUser = Annotated[SessionInfo, Depends(_current_session, cast=False)]


async def _admin_session(session: CurrentUser) -> SessionInfo:
    if session.role != "admin":
        raise Forbidden("this operation is for administrators")
    return session

Admin = Annotated[SessionInfo, Depends(_admin_session, cast=False)]


async def _optional_session(message: NatsMessage, sessions: SessionStore) -> SessionInfo | None:
    """No token: anonymous. A token that is sent must be valid (no silent downgrade)."""
    if not message.headers.get("Authorization"):
        return None
    return await _current_session(message, sessions)


OptionalUser = Annotated[SessionInfo | None, Depends(_optional_session, cast=False)]
