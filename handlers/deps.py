"""What handlers receive by injection. The runtime puts the shared clients in the app context;
handlers.endpoints reads these markers: a `Context` value is resolved once per app, a `Depends`
once per message."""

from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Protocol

import asyncpg
from faststream import Depends

# The class behind faststream.Context() (a factory function), to subclass it.
from faststream._internal.context import Context as _FastStreamContext
from faststream.nats.broker import NatsBroker as _Broker

from contracts.errors import Forbidden, Unauthorized
from handlers.endpoints import RequestMessage
from storage.outbox import OutboxRow
from storage.ratelimits import LoginLimiter
from storage.sessions import SessionInfo, Sessions


class Context(_FastStreamContext):
    """FastStream's Context, resolved on the event loop where fast_depends still resolves it (a
    handler called through FastStream's own injection): fast_depends runs a sync `use` in anyio's
    thread pool, a thread hop per parameter per message for what is a dict read."""

    async def use(self, /, **kwargs: object) -> dict[str, object]:
        return super().use(**kwargs)


NatsMessage = Annotated[RequestMessage, Context("message")]
NatsBroker = Annotated[_Broker, Context("broker")]


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


class Publisher(Protocol):
    """Publishes outbox rows the caller has just committed (runtime.relay.OutboxRelay, one per
    schema, in the context as `outbox.<schema>`); rows it could not publish wait for the sweep."""

    async def send(self, rows: Sequence[OutboxRow]) -> None: ...


LoginLimits = Annotated[LoginLimiter, Context("login_limiter")]


async def _current_session(message: NatsMessage, sessions: SessionStore) -> SessionInfo:
    scheme, _, token = (message.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    session = await sessions.resolve(token.strip())
    if session is None:
        if await sessions.was_issued(token.strip()):
            raise Unauthorized("the session has expired or was ended", code="session_expired")
        raise Unauthorized("the token was never issued here", code="invalid_token")
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
