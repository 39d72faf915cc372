"""What clients ask of the users set: accounts, sign-in and sessions."""

import math
from datetime import UTC, datetime

from contracts.base import new_id
from contracts.errors import Conflict, NotFound, TooManyRequests, Unauthorized
from contracts.events import UserLoggedIn, UserRegistered
from contracts.users import (
    GET,
    LOGIN,
    LOGOUT,
    LOGOUT_EVERYWHERE,
    ME,
    REGISTER,
    GetUser,
    LoggedOut,
    Login,
    Register,
    Session,
    User,
)
from handlers.deps import Admin, CurrentUser, Db, LoginLimits, SessionStore
from handlers.users import users
from handlers.users.passwords import hash_password, verify_password
from storage import outbox
from storage import users as accounts


async def create_account(db: Db, email: str, password: str, name: str, role: str) -> User:
    """Stores a new account and its UserRegistered event in one transaction."""
    password_hash = await hash_password(password)
    async with db.transaction():
        user = await accounts.insert_account(db, new_id(), email, name, role, password_hash)
        if user is None:
            raise Conflict("an account with this email already exists", code="email_taken")
        await outbox.add(db, "users", UserRegistered(user_id=user.user_id, email=email, role=role))
    return user


@users.request(REGISTER)
async def register(req: Register, db: Db) -> User:
    """Creates a customer account; 409 when the email is already registered."""
    return await create_account(db, req.email, req.password, req.name, "customer")


@users.request(LOGIN)
async def login(req: Login, db: Db, sessions: SessionStore, limits: LoginLimits) -> Session:
    """Signs in and returns a session token (and a device token for the next sign-in). Unknown
    email and wrong password get the same 401; failed attempts are limited (storage.ratelimits)."""
    attempt = await limits.begin(req.email, req.device_token)
    if attempt.wait is not None:
        raise TooManyRequests(
            f"too many failed sign-in attempts; try again in {math.ceil(attempt.wait)} s")
    found = await accounts.credentials(db, req.email)
    matches, needs_rehash = await verify_password(found[1] if found else None, req.password)
    if found is None or not matches:
        await limits.failed(attempt)
        raise Unauthorized("the email or password is incorrect", code="invalid_credentials")
    user = found[0]
    device_token = await limits.succeeded(attempt)
    token, expires_at = await sessions.start(user.user_id, user.role)
    async with db.transaction():
        if needs_rehash:
            await accounts.update_password_hash(db, user.user_id, await hash_password(req.password))
        await outbox.add(db, "users", UserLoggedIn(user_id=user.user_id))
    return Session(
        token=token, user_id=user.user_id, role=user.role,
        expires_at=datetime.fromtimestamp(expires_at, UTC), device_token=device_token,
    )


@users.request(LOGOUT)
async def logout(session: CurrentUser, sessions: SessionStore) -> LoggedOut:
    """Ends the session of the token sent."""
    return LoggedOut(sessions_ended=await sessions.end(session))


@users.request(LOGOUT_EVERYWHERE)
async def logout_everywhere(session: CurrentUser, sessions: SessionStore) -> LoggedOut:
    """Ends every session of the signed-in account, on every device."""
    return LoggedOut(sessions_ended=await sessions.end_all(session.user_id))


@users.request(ME)
async def me(session: CurrentUser, db: Db) -> User:
    """The signed-in account."""
    if (user := await accounts.account(db, session.user_id)) is None:
        raise Unauthorized("the account no longer exists")
    return user


@users.request(GET)
async def get_user(req: GetUser, admin: Admin, db: Db) -> User:
    """Any account by id (administrators only)."""
    if (user := await accounts.account(db, req.user_id)) is None:
        raise NotFound("user", req.user_id)
    return user
