"""Redis killed and restarted under traffic: while it is down, what needs it (sessions, sign-in
limits) answers 503 `unavailable` and the product cache is bypassed; once it is back, no request
fails on a connection the outage left dead."""

import asyncio
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from support import RUN_ID, TEST_PASSWORD, eventually, sign_up, unique_email

from runtime.app import build_app
from runtime.tools.bootstrap import ensure_admin
from runtime.tools.client import AtlanticClient
from runtime.tools.services import NatsServer, free_port, wait_until_answers
from storage.postgres import drop_database

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs redis-server to start and kill one of its own")


class RedisServer:
    """A redis-server of the test's own that keeps every write (appendfsync always), so a
    SIGKILL loses no session: what clients see after a restart is the outage, not lost data."""

    def __init__(self, port: int, data_dir: Path):
        self.port, self.data_dir = port, data_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "always",
             "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until_answers(self.url, 6379, 10), "redis-server did not start"
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None


class Traffic:
    """Shoppers calling users.me and products.get back to back; each reply is filed under the
    phase it started and ended in (a reply that spans a phase change under "between")."""

    def __init__(self, customer: AtlanticClient, product_id: str):
        self.customer, self.product_id = customer, product_id
        self.phase = "up"
        self.replies: dict[str, Counter[tuple[str, int | None]]] = {}
        self.running = True

    async def shopper(self) -> None:
        while self.running:
            for kind, subject, body in (
                    ("me", "atlantic.users.me", None),
                    ("product", "atlantic.catalog.products.get", {"productId": self.product_id})):
                began = self.phase
                reply = await self.customer.call_or_none(subject, body, timeout=5)
                phase = began if self.phase == began else "between"
                status = None if reply is None else reply.status
                self.replies.setdefault(phase, Counter())[kind, status] += 1

    async def seen(self, phase: str, kind: str, status: int, times: int) -> bool:
        return self.replies.get(phase, Counter())[kind, status] >= times


async def test_redis_outage_answers_503_and_nothing_fails_after_it_returns(settings, tmp_path):
    redis = RedisServer(free_port(), tmp_path / "redis").start()
    nats = NatsServer(free_port(), tmp_path / "nats").start()
    dsn = settings.postgres_dsn.replace(f"atlantic_test_{RUN_ID}",
                                        f"atlantic_test_{RUN_ID}_redis")
    world = settings.model_copy(update={
        "nats_url": nats.url, "postgres_dsn": dsn, "redis_url": redis.url,
        "login_window_seconds": 60})
    client = None
    try:
        async with build_app(world, ["users", "catalog"]):  # creates the database
            client = await AtlanticClient.connect(nats.url)
            admin_email = unique_email("redis-admin")
            await ensure_admin(world, admin_email, TEST_PASSWORD)
            login = await client.call("atlantic.users.login",
                                      {"email": admin_email, "password": TEST_PASSWORD})
            admin = client.signed_in(login.body["token"])
            product = await admin.call("atlantic.catalog.products.create", {
                "name": "Outage Lamp", "price": "12.00", "category": f"redis-{RUN_ID}",
                "stock": 5})
            assert product.ok, product.body
            customer, account = await sign_up(client, "redis-customer")
            traffic = Traffic(customer, product.body["productId"])
            shoppers = [asyncio.create_task(traffic.shopper()) for _ in range(8)]
            await eventually(lambda: traffic.seen("up", "me", 200, 50))

            redis.kill()
            traffic.phase = "down"
            await eventually(lambda: traffic.seen("down", "me", 503, 20))
            refused = await client.call("atlantic.users.login",
                                        {"email": account["email"], "password": TEST_PASSWORD})

            redis.start()
            traffic.phase = "back"
            signed_in = await client.call("atlantic.users.login",
                                          {"email": account["email"], "password": TEST_PASSWORD})
            await eventually(lambda: traffic.seen("back", "me", 200, 50))
            traffic.running = False
            await asyncio.gather(*shoppers)
    finally:
        if client:
            await client.close()
        redis.kill()
        nats.stop()
        await drop_database(dsn)

    statuses = {phase: dict(seen) for phase, seen in traffic.replies.items()}
    assert set(traffic.replies["up"]) == {("me", 200), ("product", 200)}, statuses
    # Down: sessions answer 503, and products are read from PostgreSQL past the cache.
    assert set(traffic.replies["down"]) == {("me", 503), ("product", 200)}, statuses
    assert set(traffic.replies.get("between", {})) <= {("me", 200), ("me", 503),
                                                        ("product", 200)}, statuses
    assert set(traffic.replies["back"]) == {("me", 200), ("product", 200)}, statuses
    assert (refused.status, refused.error_code) == (503, "unavailable")
    assert "Redis does not answer" in refused.body["error"]["message"]
    assert signed_in.status == 200, signed_in.body
