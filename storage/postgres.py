"""The PostgreSQL pool, and the database itself when a developer's machine lacks it."""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from storage.migrations import LOCK_KEY


class _PooledConnection(asyncpg.Connection):
    """Pooled connections carry no session state (no LISTEN, advisory lock, SET or open cursor:
    the relay listens on a connection of its own), so the reset query asyncpg sends on every
    release is a round trip for nothing. Open transactions are still rolled back."""

    def get_reset_query(self) -> str:
        return ""


def _accept(_written: Any) -> None:
    return None


@dataclass(frozen=True)
class Write:
    """A batch's changes as one data-modifying statement, held back so that it can share a
    round trip with the inbox marks and outbox rows (storage.inbox.record_batch): its common
    table expressions (`name AS (...), ...`, parameters from $1), the scalar SQL it answers
    with, its arguments, and a check of that answer (raises ConcurrentChange on a conflict)."""

    ctes: str
    result: str
    args: tuple[Any, ...]
    check: Callable[[Any], None] = _accept

    async def run(self, db: asyncpg.Connection) -> None:
        """The statement on its own (inside the caller's transaction)."""
        self.check(await db.fetchval(f"WITH {self.ctes} SELECT {self.result}", *self.args))


class ConcurrentChange(Exception):
    """Another transaction wrote a row this one read as missing (a payment, a hold): the
    transaction is rolled back and tried again, over the row that is there now."""

    routine = True  # two replicas on one order's events at once: logged at INFO


async def open_pool(dsn: str, size: int) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=1, max_size=size,
                                     connection_class=_PooledConnection)


def assignments(columns: dict[str, object], allowed: set[str], *, first: int) -> str:
    """`, a = $first, b = $first+1 ...` for an UPDATE's SET list. Column names cannot be bound
    parameters, so only names from `allowed` (fixed in code) ever reach the SQL."""
    if unknown := set(columns) - allowed:
        raise ValueError(f"not an updatable column: {sorted(unknown)}")
    return "".join(f", {name} = ${n}" for n, name in enumerate(columns, start=first))


def _split_database(dsn: str) -> tuple[str, str]:
    """The database name (checked, since CREATE DATABASE takes no parameters) and a DSN for the
    maintenance database."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/") or "postgres"
    if not re.fullmatch(r"[A-Za-z0-9_]{1,63}", name):
        raise ValueError(f"unsupported database name {name!r}")
    return name, urlunsplit(parts._replace(path="/postgres"))


async def create_database(dsn: str) -> bool:
    """Creates the database the DSN names when it does not exist; True when it did so.

    A database that answers is left alone without touching the maintenance database (a managed
    server may not open that to us). Creating it holds the migrations' advisory lock there, so
    replicas starting together wait for the one that creates it."""
    try:
        await (await asyncpg.connect(dsn)).close()
        return False
    except asyncpg.InvalidCatalogNameError:
        pass
    name, admin_dsn = _split_database(dsn)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:  # created by something not taking the lock
            return False
        return True
    finally:
        await conn.close()  # releases the lock


async def drop_database(dsn: str) -> None:
    name, admin_dsn = _split_database(dsn)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
