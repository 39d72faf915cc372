"""The test harness: real PostgreSQL and Redis from settings, a fresh database and Redis key
prefix per run, and a nats-server started here on a free port with its own JetStream store.

Everything is session-scoped on one event loop, so the system starts once; tests isolate
themselves by using fresh emails, products and orders.
"""

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from faststream import FastStream

from handlers import HANDLER_SETS
from runtime.app import build_app
from runtime.settings import Settings
from runtime.tools.client import AtlanticClient
from runtime.tools.services import NatsServer, ensure_postgres, ensure_redis, free_port
from storage.postgres import create_database, drop_database

RUN_ID = uuid.uuid4().hex[:10]
TEST_PASSWORD = "correct-horse-battery"
_counter = itertools.count()


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{RUN_ID}-{next(_counter)}@example.com"


def _test_dsn(base_dsn: str) -> str:
    parts = urlsplit(base_dsn)
    return urlunsplit(parts._replace(path=f"/atlantic_test_{RUN_ID}"))


# What a test of the fast tier may not ask for: each of these starts or reaches a server.
SERVER_FIXTURES = {"nats_server", "settings", "database", "system", "client", "customer", "admin"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("fast") and SERVER_FIXTURES & set(item.fixturenames):
            raise pytest.UsageError(f"{item.nodeid} is marked fast but asks for a server")


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(free_port(), Path(tmp_path_factory.mktemp("nats")) / "store").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    base = Settings()
    for problem in (ensure_postgres(base.postgres_dsn), ensure_redis(base.redis_url)):
        if problem:
            pytest.exit(problem, returncode=3)
    return base.model_copy(update={
        "nats_url": nats_server.url,
        "postgres_dsn": _test_dsn(base.postgres_dsn),
        "redis_prefix": f"atlantic-test-{RUN_ID}:",
        "data_dir": str(tmp_path_factory.mktemp("data")),
        "login_attempts": 5,
        "login_window_seconds": 2,
        "outbox_sweep_seconds": 0.3,
        "hold_sweep_seconds": 0.2,
        "graceful_timeout_seconds": 5.0,
        "order_sweep_seconds": 0.3,
        "sandbox_decline_above": Decimal("5000.00"),
    })


@pytest.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[str]:
    await create_database(settings.postgres_dsn)
    yield settings.postgres_dsn
    await drop_database(settings.postgres_dsn)


# orders and payments act on every OrderCreated, and the catalog's tests drive the saga by hand,
# so the shared system runs without them; the saga's tests start a world of their own (saga.py).
SHARED_SETS = [name for name in HANDLER_SETS if name not in ("orders", "payments")]


@pytest.fixture(scope="session")
async def system(settings: Settings, database: str) -> AsyncIterator[FastStream]:
    """The shared handler sets running in this process against the test servers."""
    app = build_app(settings, SHARED_SETS)
    async with app:
        yield app


@pytest.fixture(scope="session")
async def client(system: FastStream, settings: Settings) -> AsyncIterator[AtlanticClient]:
    """An anonymous client speaking to the system over NATS, as any outside client would."""
    client = await AtlanticClient.connect(settings.nats_url)
    yield client
    await client.close()


async def sign_up(client: AtlanticClient, tag: str = "customer") -> tuple[AtlanticClient, dict]:
    email = unique_email(tag)
    reply = await client.call("atlantic.users.register",
                              {"email": email, "password": TEST_PASSWORD, "name": tag})
    assert reply.ok, reply.body
    login = await client.call("atlantic.users.login", {"email": email, "password": TEST_PASSWORD})
    assert login.ok, login.body
    return client.signed_in(login.body["token"]), reply.body


@pytest.fixture
async def customer(client: AtlanticClient) -> AtlanticClient:
    signed_in, _ = await sign_up(client)
    return signed_in


@pytest.fixture(scope="session")
async def admin(client: AtlanticClient, settings: Settings) -> AtlanticClient:
    from runtime.tools.bootstrap import ensure_admin

    email = unique_email("admin")
    await ensure_admin(settings, email, TEST_PASSWORD)
    login = await client.call("atlantic.users.login", {"email": email, "password": TEST_PASSWORD})
    assert login.ok, login.body
    return client.signed_in(login.body["token"])


async def eventually(check, *, seconds: float = 10.0, interval: float = 0.05):
    """Polls an async check until it returns something truthy; fails with its last value."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result = await check()
        if result or asyncio.get_running_loop().time() > deadline:
            assert result, f"condition not met within {seconds} s: {result!r}"
            return result
        await asyncio.sleep(interval)


async def read_events(client: AtlanticClient, subject: str) -> list[tuple[dict, dict]]:
    """Every message on the ATLANTIC stream under `subject`, as (headers, body), oldest first."""
    import json

    from nats.errors import TimeoutError as NatsTimeout

    js = client.nc.jetstream()
    subscription = await js.pull_subscribe(subject, stream="ATLANTIC")
    events: list[tuple[dict, dict]] = []
    try:
        while True:
            try:
                batch = await subscription.fetch(256, timeout=0.5)
            # nats-py sometimes raises a plain asyncio TimeoutError here, not its own subclass.
            except (NatsTimeout, TimeoutError):
                return events
            for msg in batch:
                events.append((dict(msg.headers or {}), json.loads(msg.data)))
                await msg.ack()
    finally:
        await subscription.unsubscribe()
