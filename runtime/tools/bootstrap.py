"""What a fresh system needs before anyone can use it: an admin and, for demos, a catalog.
`atlantic up`, `atlantic users create-admin`, the bench's worlds and the tests share these."""

import asyncio

from contracts.errors import Conflict
from contracts.users import Register
from handlers.catalog.demo import load_demo_catalog
from handlers.users.requests import create_account
from runtime.settings import Settings
from storage.migrations import apply_migrations
from storage.postgres import create_database, open_pool
from storage.users import promote_to_admin


async def ensure_admin(settings: Settings, email: str, password: str) -> str:
    request = Register(email=email, password=password, name="Administrator")
    await create_database(settings.postgres_dsn)
    await asyncio.to_thread(apply_migrations, settings.postgres_dsn)
    pool = await open_pool(settings.postgres_dsn, 2)
    try:
        async with pool.acquire() as db:
            try:
                user = await create_account(db, request.email, request.password, request.name,
                                            "admin")
                return f"created admin {user.email} ({user.user_id})"
            except Conflict:
                await promote_to_admin(db, request.email)
                return f"{request.email} already existed; it is an admin now"
    finally:
        await pool.close()


async def ensure_demo_catalog(settings: Settings) -> str:
    """Loads the demo catalog into an empty catalog; leaves a catalog with products alone."""
    pool = await open_pool(settings.postgres_dsn, 2)
    try:
        async with pool.acquire() as db:
            added = await load_demo_catalog(db)
    finally:
        await pool.close()
    return f"loaded the demo catalog: {added} products" if added else "the catalog has products"
