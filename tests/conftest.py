"""The test harness: real PostgreSQL and Redis from settings, a fresh database and Redis key
prefix per run, and a nats-server started here on a free port with its own JetStream store.

Everything is session-scoped on one event loop, so the system starts once; tests isolate
themselves by using fresh emails, products and orders.
"""

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from faststream import FastStream
from support import RUN_ID, SHARED_SETS, TEST_PASSWORD, sign_up, unique_email

from runtime.app import build_app
from runtime.settings import Settings
from runtime.tools.client import AtlanticClient
from runtime.tools.services import NatsServer, ensure_postgres, ensure_redis, free_port
from storage.postgres import create_database, drop_database


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
        "web_port": 0,  # any free port: test runs side by side never collide
    })


@pytest.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[str]:
    await create_database(settings.postgres_dsn)
    yield settings.postgres_dsn
    await drop_database(settings.postgres_dsn)


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
