"""Queries on the users schema."""

from datetime import datetime

import asyncpg

from contracts.users import User

_COLUMNS = "id AS user_id, email, name, role, created_at"


async def insert_account(
    db: asyncpg.Connection, user_id: str, email: str, name: str, role: str, password_hash: str
) -> User | None:
    """The new account, or None when the email is taken."""
    row = await db.fetchrow(
        "INSERT INTO users.accounts (id, email, name, role, password_hash)"
        f" VALUES ($1, $2, $3, $4, $5) ON CONFLICT (email) DO NOTHING RETURNING {_COLUMNS}",
        user_id, email, name, role, password_hash,
    )
    return User.model_validate(dict(row)) if row else None


async def account(db: asyncpg.Connection, user_id: str) -> User | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM users.accounts WHERE id = $1", user_id)
    return User.model_validate(dict(row)) if row else None


async def credentials(db: asyncpg.Connection, email: str) -> tuple[User, str] | None:
    """The account and its password hash, for a login."""
    row = await db.fetchrow(
        f"SELECT {_COLUMNS}, password_hash FROM users.accounts WHERE email = $1", email
    )
    if row is None:
        return None
    return User.model_validate(dict(row)), row["password_hash"]


async def update_password_hash(db: asyncpg.Connection, user_id: str, password_hash: str) -> None:
    await db.execute(
        "UPDATE users.accounts SET password_hash = $2 WHERE id = $1", user_id, password_hash
    )


async def promote_to_admin(db: asyncpg.Connection, email: str) -> datetime | None:
    return await db.fetchval(
        "UPDATE users.accounts SET role = 'admin' WHERE email = $1 RETURNING created_at", email
    )
