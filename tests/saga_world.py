"""A world of its own for the order saga: every set, on a NATS server and a database of its own,
so its events never meet the shared system's (whose catalog tests drive the saga by hand).

The NATS server runs deploy/nats.conf with generated passwords, as `atlantic up` does: every set
connects as its own NATS user, the customers and the admin as `client`, and what a test does by
hand on the stream (forging an event, reading the history) as the operator's `admin`. A grant
the saga lacks fails the world when it closes, with the server's "Publish Violation" and
"Subscription Violation" lines.

Two shapes: every set in this process (one app per set, as `atlantic up` runs them), or each set
in its own `atlantic serve` process.
"""

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import asyncpg
from support import ATLANTIC, RUN_ID, TEST_PASSWORD, cli_env, eventually, sign_up, unique_email

from runtime.accounts import CLIENT_USER, NATS_CONF, Passwords
from runtime.app import build_apps
from runtime.settings import Settings
from runtime.tools.bootstrap import ensure_admin
from runtime.tools.client import AtlanticClient
from runtime.tools.readiness import wait_until_answering
from runtime.tools.services import NatsServer, free_port
from storage.postgres import create_database, drop_database

SAGA_SETS = ("users", "catalog", "orders", "payments")


@dataclass
class World:
    settings: Settings
    nats: NatsServer
    client: AtlanticClient
    admin: AtlanticClient
    operator: AtlanticClient  # the NATS admin user: the stream by hand
    db: asyncpg.Pool
    client_url: str  # NATS as the `client` user, for a connection of a test's own
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def customer(self) -> tuple[AtlanticClient, str]:
        signed_in, account = await sign_up(self.client)
        return signed_in, account["userId"]

    async def product(self, price: str = "25.00", stock: int = 100) -> str:
        n = next(_numbers)
        reply = await self.admin.call("atlantic.catalog.products.create", {
            "name": f"Saga Lamp {n}", "price": price, "category": f"Saga {RUN_ID}",
            "stock": stock, "sku": f"S-{RUN_ID}-{n}"})
        assert reply.ok, reply.body
        return reply.body["productId"]

    async def order(self, customer: AtlanticClient, *lines: tuple[str, int],
                    headers: dict[str, str] | None = None) -> dict:
        reply = await customer.call("atlantic.orders.create", {"items": [
            {"productId": p, "quantity": q} for p, q in lines]}, headers=headers)
        assert reply.ok, reply.body
        return reply.body

    async def status_becomes(self, customer: AtlanticClient, order_id: str, status: str,
                             seconds: float = 20.0) -> dict:
        async def check():
            reply = await customer.call("atlantic.orders.get", {"orderId": order_id})
            assert reply.ok, reply.body
            return reply.body if reply.body["status"] == status else None

        return await eventually(check, seconds=seconds)

    async def stock(self, product_id: str) -> dict:
        reply = await self.client.call("atlantic.catalog.inventory.get",
                                       {"productId": product_id})
        assert reply.ok, reply.body
        return reply.body

    async def payment(self, order_id: str) -> dict:
        reply = await self.admin.call("atlantic.payments.get", {"orderId": order_id})
        assert reply.ok, reply.body
        return reply.body

    async def charges(self, order_id: str) -> int:
        """Charges the sandbox provider made for the order: the money that really moved."""
        return await self.db.fetchval(
            "SELECT count(*) FROM payments.sandbox_ledger WHERE idempotency_key = $1",
            f"charge-{order_id}")


_numbers = iter(range(10**9))


async def start_set(world: World, name: str) -> None:
    """Starts `atlantic serve --handlers name` and waits until it answers $SRV.PING."""
    process = world.processes[name] = await asyncio.create_subprocess_exec(
        ATLANTIC, "serve", "--handlers", name, env=cli_env(world.settings))
    await wait_until_answering(world.client.nc, name, seconds=30,
                               exited=lambda: process.returncode is not None)


async def stop_set(world: World, name: str, sig: int = signal.SIGTERM) -> None:
    process = world.processes.pop(name)
    if process.returncode is None:
        process.send_signal(sig)
        await asyncio.wait_for(process.wait(), 30)


async def stop_all(world: World) -> list[str]:
    """SIGTERM to every set at once, then waits; one that hangs is killed, so no process
    outlives the test, and named, so the test fails."""
    for process in world.processes.values():
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    stuck = []
    for name, process in world.processes.items():
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
            stuck.append(name)
    world.processes.clear()
    return stuck


@contextlib.asynccontextmanager
async def open_world(settings: Settings, store: Path, shape: str, tag: str,
                     **overrides: object) -> AsyncIterator[World]:
    """shape: "one-process" (every set in this process) or "process-per-set"; overrides: more
    settings for the world (and the sets started in it later with start_set)."""
    data_dir = store.with_name(f"{store.name}-data")
    passwords = Passwords.ensure(data_dir)
    nats = NatsServer(free_port(), store, config=NATS_CONF,
                      env=passwords.environment()).start()
    dsn = settings.postgres_dsn.replace(f"atlantic_test_{RUN_ID}",
                                        f"atlantic_test_{RUN_ID}_{tag}")
    world_settings = settings.model_copy(update={
        "nats_url": nats.url, "postgres_dsn": dsn, "data_dir": str(data_dir),
        "redis_prefix": f"atlantic-test-{RUN_ID}-{tag}:",
        "sandbox_decline_above": Decimal("5000.00"), **overrides})
    await create_database(dsn)
    admin_email = unique_email("saga-admin")
    await ensure_admin(world_settings, admin_email, TEST_PASSWORD)
    db = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    client_url = passwords.url(nats.url, CLIENT_USER)
    client = await AtlanticClient.connect(client_url)
    operator = await AtlanticClient.connect(passwords.url(nats.url, "admin"))
    world = World(world_settings, nats, client, client, operator, db, client_url)
    in_process = contextlib.AsyncExitStack()
    try:
        if shape == "one-process":
            for app in build_apps(world_settings, SAGA_SETS):
                await in_process.enter_async_context(app)
        else:
            for name in SAGA_SETS:
                await start_set(world, name)
        login = await client.call("atlantic.users.login",
                                  {"email": admin_email, "password": TEST_PASSWORD})
        assert login.ok, login.body
        world.admin = client.signed_in(login.body["token"])
        yield world
    finally:
        stuck = await stop_all(world)
        await in_process.aclose()
        await client.close()
        await operator.close()
        await db.close()
        nats.stop()
        if not os.environ.get("ATLANTIC_KEEP_TEST_DB"):
            await drop_database(dsn)
    assert not stuck, f"did not stop within 30 s of SIGTERM (killed): {stuck}"
    violations = permission_violations(nats.log_path.read_text())
    assert not violations, "\n".join(violations[:20])


def permission_violations(log: str) -> list[str]:
    """The publish and subscription violations in a nats-server log, but for one kind that is
    no missing grant: a reply a set had buffered while the server was away, refused by the
    server restarted since (it never delivered that request, so allow_responses does not
    cover it; the requester's own retry gets its answer). Each line starts with the pid of the
    server process that wrote it."""
    lines = log.splitlines()
    first_pid = lines[0].split("]", 1)[0] if lines else ""
    return [line for line in lines
            if ("Publish Violation" in line or "Subscription Violation" in line)
            and not (line.split("]", 1)[0] != first_pid
                     and 'Publish Violation - Subject "_INBOX.' in line)]
