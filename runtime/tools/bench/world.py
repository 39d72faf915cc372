"""A throwaway Atlantic, the one the bench measures and the tests run against: its own nats-server
on a free port (or a three-node cluster), its own PostgreSQL database, Redis key prefix and data
directory (chDB, NATS passwords), an admin, and handler sets in this process or in `atlantic
serve` processes laid out as asked. What it started stops when it closes.

With `nats_users`, the NATS server runs deploy/nats.conf with generated passwords, as `atlantic
up` does: every set connects as its own NATS user, the customers and the admin as `client`, and
what is done by hand on the stream (forging an event, reading the history) as the operator's
`admin`. A grant the sets lack then fails the world when it closes, with the server's "Publish
Violation" and "Subscription Violation" lines. Without it, an open server, as the bench measures.
"""

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from runtime.accounts import CLIENT_USER, NATS_CONF, Passwords
from runtime.app import build_apps
from runtime.settings import Settings
from runtime.tools.bootstrap import ensure_admin, ensure_demo_catalog
from runtime.tools.client import AtlanticClient, Reply
from runtime.tools.readiness import wait_until_answering
from runtime.tools.services import NatsServer, cluster, free_port
from storage.postgres import create_database, drop_database

ATLANTIC = str(Path(sys.executable).parent / "atlantic")
SAGA_SETS = ("users", "catalog", "orders", "payments")
PASSWORD = "correct-horse-battery"  # the customers' a world signs up
_numbers = itertools.count()


@dataclass
class World:
    settings: Settings
    nats: NatsServer  # the first of `nodes`
    nodes: list[NatsServer]
    client: AtlanticClient  # anonymous; as the `client` NATS user where the server has users
    operator: AtlanticClient  # the NATS admin user: the stream by hand (the client, if open)
    db: asyncpg.Pool
    client_url: str  # NATS as the `client` user, for a connection of a caller's own
    admin: AtlanticClient | None = None  # signed in once the users set answers
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    admin_token: str | None = None  # the bench's own admin session

    def env(self, **overrides: str) -> dict[str, str]:
        return os.environ | self.settings.environment() | {"ATLANTIC_LOG_LEVEL": "WARNING"} \
            | overrides

    # --- handler sets ----------------------------------------------------------------------------

    async def serve(self, sets: Iterable[str], *, key: str | None = None,
                    **env: str) -> subprocess.Popen:
        """`atlantic serve --handlers a,b` in a child process, kept as processes[key] (by default
        the sets' names; a second replica needs a key of its own), once every set answers from as
        many instances as this world now runs."""
        sets = list(sets)
        name = ",".join(sets)
        # A plain Popen (it returns at once): the bench's RSS readings are sync.
        process = subprocess.Popen(  # noqa: ASYNC220
            [ATLANTIC, "serve", "--handlers", name], env=self.env(**env))
        self.processes[key or name] = process
        for handler_set in sets:
            instances = sum(handler_set in p.args[-1].split(",")
                            for p in self.processes.values())
            await wait_until_answering(self.client.nc, handler_set, instances=instances,
                                       exited=lambda: process.poll() is not None)
        if "users" in sets:
            await self._sign_in_admin()
        return process

    async def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Sends the process serving `name` a signal and waits until it exits (30 s at most)."""
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(sig)
            await asyncio.to_thread(process.wait, 30)

    async def stop_all(self) -> list[str]:
        """SIGTERM to every process at once, then waits; one that hangs is killed, so none
        outlives the world, and named."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        stuck = []
        for name, process in self.processes.items():
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
                stuck.append(name)
        self.processes.clear()
        return stuck

    async def _sign_in_admin(self) -> None:
        if self.admin is None:
            login = _ok(await self.client.call("atlantic.users.login", {
                "email": self.settings.admin_email, "password": self.settings.admin_password}))
            self.admin = self.client.signed_in(login["token"])

    def _admin(self) -> AtlanticClient:
        if self.admin is None:
            raise RuntimeError("no admin session: the world runs no users set")
        return self.admin

    # --- what a shopper and an operator do -------------------------------------------------------

    async def customer(self) -> tuple[AtlanticClient, str]:
        """A new customer, signed in: its client and its user id."""
        signed_in, account = await self.client.sign_up(
            f"customer-{next(_numbers)}@example.com", PASSWORD, "customer")
        return signed_in, account["userId"]

    async def product(self, price: str = "25.00", stock: int = 100) -> str:
        n = next(_numbers)
        return _ok(await self._admin().call("atlantic.catalog.products.create", {
            "name": f"Saga Lamp {n}", "price": price, "category": "Saga", "stock": stock,
            "sku": f"S-{n}"}))["productId"]

    async def order(self, customer: AtlanticClient, *lines: tuple[str, int],
                    headers: dict[str, str] | None = None) -> dict:
        return _ok(await customer.call("atlantic.orders.create", {"items": [
            {"productId": p, "quantity": q} for p, q in lines]}, headers=headers))

    async def status_becomes(self, customer: AtlanticClient, order_id: str, status: str,
                             seconds: float = 20.0) -> dict:
        """The order as `customer` sees it once it has `status`; TimeoutError after `seconds`."""
        deadline = asyncio.get_running_loop().time() + seconds
        while (order := _ok(await customer.call("atlantic.orders.get", {"orderId": order_id}))
               )["status"] != status:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"order {order_id} is {order['status']}, not {status},"
                                   f" after {seconds} s")
            await asyncio.sleep(0.05)
        return order

    async def stock(self, product_id: str) -> dict:
        return _ok(await self.client.call("atlantic.catalog.inventory.get",
                                          {"productId": product_id}))

    async def payment(self, order_id: str) -> dict:
        return _ok(await self._admin().call("atlantic.payments.get", {"orderId": order_id}))

    async def charges(self, order_id: str) -> int:
        """Charges the sandbox provider made for the order: the money that really moved."""
        return await self.db.fetchval(
            "SELECT count(*) FROM payments.sandbox_ledger WHERE idempotency_key = $1",
            f"charge-{order_id}")


def _ok(reply: Reply) -> dict:
    if not reply.ok:
        raise RuntimeError(f"{reply.status}: {reply.body}")
    return reply.body


@contextlib.asynccontextmanager
async def open_world(base: Settings, tag: str, *, sets: Iterable[str] = (),
                     in_process: bool = False, nats_users: bool = False, nodes: int = 1,
                     demo: bool = False, keep: bool = False,
                     **overrides: object) -> AsyncIterator[World]:
    """Servers, a database `atlantic_<tag>` and an admin (base.admin_email and admin_password);
    `sets` started before it is handed over: in this process (one app per set, as `atlantic up`
    runs them) with `in_process`, else each in an `atlantic serve` process of its own; more with
    World.serve. With `nodes` 3, NATS is a three-node cluster and the stream has three replicas.
    `overrides`: more settings, for the sets started in it too. `keep`: the database and the
    directory stay."""
    root = Path(tempfile.mkdtemp(prefix=f"atlantic-{tag}-"))
    data_dir = root / "data"
    passwords = Passwords.ensure(data_dir) if nats_users else None
    if passwords is not None and nodes > 1:
        raise ValueError("a world with NATS users runs one NATS server")
    servers = (cluster(nodes, root / "nats") if nodes > 1 else [NatsServer(
        free_port(), root / "nats", config=NATS_CONF if passwords else None,
        env=passwords.environment() if passwords else None).start()])
    nats_url = ",".join(s.url for s in servers)
    dsn = base.postgres_dsn.rsplit("/", 1)[0] + f"/atlantic_{tag}"
    settings = base.model_copy(update={
        "nats_url": nats_url, "stream_replicas": min(nodes, 3),
        "postgres_dsn": dsn, "redis_prefix": f"atlantic-{tag}:", "data_dir": str(data_dir),
        "web_port": 0, **overrides})  # the rest as given: the bench measures defaults
    in_this_process = contextlib.AsyncExitStack()
    world: World | None = None
    stuck: list[str] = []
    try:
        await drop_database(dsn)  # a previous run killed half-way
        await create_database(dsn)
        await ensure_admin(settings, settings.admin_email, settings.admin_password)
        if demo:
            await ensure_demo_catalog(settings)
        client_url = passwords.url(nats_url, CLIENT_USER) if passwords else nats_url
        client = await in_this_process.enter_async_context(_closing(
            await AtlanticClient.connect(client_url)))
        operator = client if passwords is None else await in_this_process.enter_async_context(
            _closing(await AtlanticClient.connect(passwords.url(nats_url, "admin"))))
        db = await in_this_process.enter_async_context(
            asyncpg.create_pool(dsn, min_size=1, max_size=2))
        world = World(settings, servers[0], servers, client, operator, db, client_url)
        sets = list(sets)
        if in_process:
            for app in build_apps(settings, sets):
                await in_this_process.enter_async_context(app)
            for handler_set in sets:  # its subscriptions reached the server: it answers
                await wait_until_answering(client.nc, handler_set)
            if "users" in sets:
                await world._sign_in_admin()
        else:
            for name in sets:
                await world.serve([name])
        yield world
    finally:
        if world is not None:
            stuck = await world.stop_all()
        await in_this_process.aclose()
        for server in servers:
            server.stop()
        violations = permission_violations(servers[0].log_path.read_text()) if passwords else []
        if not keep:
            await drop_database(dsn)
            shutil.rmtree(root, ignore_errors=True)
    if stuck:
        raise RuntimeError(f"did not stop within 30 s of SIGTERM (killed): {stuck}")
    if violations:
        raise RuntimeError("\n".join(violations[:20]))


@contextlib.asynccontextmanager
async def _closing(client: AtlanticClient) -> AsyncIterator[AtlanticClient]:
    try:
        yield client
    finally:
        await client.close()


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
