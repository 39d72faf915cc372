"""The runtime around the handlers: migrations, discovery, the CLI and a clean shutdown."""

import asyncio
import json
import logging
import signal
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
from nats.micro.service import ServiceInfo, ServiceStats
from support import ATLANTIC, RUN_ID, SHARED_SETS, TEST_PASSWORD, cli_env, run_cli, unique_email

from handlers import HANDLER_SETS
from runtime.accounts import (
    CLIENT_USER,
    NATS_CONF,
    PASSWORDS_FILE,
    Passwords,
    anonymous_may_publish_events,
)
from runtime.tools.client import AtlanticClient
from runtime.tools.readiness import wait_until_answering
from runtime.tools.services import NatsServer, free_port
from storage.migrations import apply_migrations
from storage.postgres import create_database, drop_database


async def collect_replies(nc, subject: str, seconds: float = 0.5) -> list[dict]:
    inbox = nc.new_inbox()
    replies: list[dict] = []

    async def collect(msg):
        if msg.data:  # an empty message is the server's "no responders" notice
            replies.append(json.loads(msg.data))

    subscription = await nc.subscribe(inbox, cb=collect)
    await nc.publish(subject, b"", reply=inbox)
    await asyncio.sleep(seconds)
    await subscription.unsubscribe()
    return replies


async def test_migrations_are_safe_when_replicas_start_at_once(settings):
    dsn = settings.postgres_dsn.replace(f"atlantic_test_{RUN_ID}", f"atlantic_test_{RUN_ID}_mig")
    await create_database(dsn)
    try:
        with ThreadPoolExecutor(4) as pool:
            applied = list(pool.map(apply_migrations, [dsn] * 4))
        db = await asyncpg.connect(dsn)
        tables = await db.fetchval("SELECT count(*) FROM information_schema.tables"
                                   " WHERE table_schema = 'users'")
        await db.close()
    finally:
        await drop_database(dsn)

    assert sorted(len(ids) for ids in applied)[:3] == [0, 0, 0]
    assert max(len(ids) for ids in applied) >= 1
    assert tables == 3


async def test_srv_info_lists_the_endpoints_of_each_running_set(client):
    replies = await collect_replies(client.nc, "$SRV.INFO")

    infos = {info.name: info for info in map(ServiceInfo.from_dict, replies)}

    for name in SHARED_SETS:
        handler_set = HANDLER_SETS[name]
        info = infos[f"atlantic-{name}"]
        assert {e.subject for e in info.endpoints} == {e.subject for e in handler_set.endpoints}
        assert all(e.queue_group == f"atlantic-{name}" for e in info.endpoints)


async def test_srv_ping_answers_by_name_and_by_id(client):
    [by_name] = await collect_replies(client.nc, "$SRV.PING.atlantic-users")

    [by_id] = await collect_replies(client.nc, f"$SRV.PING.atlantic-users.{by_name['id']}")

    assert by_name["type"] == "io.nats.micro.v1.ping_response"
    assert by_id["id"] == by_name["id"]


async def test_srv_stats_counts_requests_and_errors(client):
    await client.call("atlantic.users.get", {"userId": "x"})  # 401: no token

    [reply] = await collect_replies(client.nc, "$SRV.STATS.atlantic-users")
    stats = ServiceStats.from_dict(reply)
    get = next(e for e in stats.endpoints if e.subject == "atlantic.users.get")

    assert get.num_requests >= 1
    assert get.num_errors >= 1
    assert get.last_error.startswith("401")


async def test_a_request_logs_one_debug_line_and_no_access_lines(client, caplog):
    caplog.set_level(logging.DEBUG)

    await client.call("atlantic.catalog.products.get", {"productId": f"none-{RUN_ID}"})

    lines = [r for r in caplog.records if "atlantic.catalog.products.get" in r.getMessage()]
    assert [(r.name, r.levelno) for r in lines] == [("atlantic.requests", logging.DEBUG)]
    assert " 404 " in lines[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith("faststream.access")
                and r.getMessage() in ("Received", "Processed")]


async def test_replies_carry_the_content_type_and_the_callers_correlation_id(client):
    subject = "atlantic.catalog.products.get"
    body = json.dumps({"productId": f"none-{RUN_ID}"}).encode()

    echoed = await client.nc.request(subject, body, headers={"correlation_id": "c-1"}, timeout=5)
    fresh = await client.nc.request(subject, body, timeout=5)
    listed = await client.nc.request("atlantic.catalog.products.list", b"{}", timeout=5)

    assert echoed.headers == {
        "content-type": "application/json", "correlation_id": "c-1",
        "Nats-Service-Error": f"product 'none-{RUN_ID}' does not exist",
        "Nats-Service-Error-Code": "404"}
    assert len(fresh.headers["correlation_id"]) == 36  # a new one, as FastStream made
    assert listed.headers["content-type"] == "application/json"
    assert "items" in json.loads(listed.data)


async def test_call_prints_the_reply_and_exits_zero(system, settings):
    body = {"email": unique_email("cli"), "password": TEST_PASSWORD, "name": "Cli"}

    code, out, err = await run_cli("call", "atlantic.users.register", json.dumps(body),
                                   env=cli_env(settings))

    assert code == 0, err
    assert json.loads(out)["email"] == body["email"]


async def test_call_prints_the_error_and_exits_non_zero(system, settings):
    code, _, err = await run_cli("call", "atlantic.users.register", '{"email": "x"}',
                                 env=cli_env(settings))

    assert code == 1
    assert "422 validation_failed" in err
    assert "password" in err


async def test_create_admin_makes_an_account_that_can_use_admin_subjects(system, settings, client):
    email = unique_email("cli-admin")

    code, out, err = await run_cli("users", "create-admin", "--email", email,
                                   "--password", TEST_PASSWORD, env=cli_env(settings))
    login = await client.call("atlantic.users.login", {"email": email, "password": TEST_PASSWORD})
    me = await client.signed_in(login.body["token"]).call("atlantic.users.me")

    assert code == 0, err
    assert email in out
    assert me.body["role"] == "admin"


async def test_serve_refuses_an_unknown_handler_set(settings):
    code, _, err = await run_cli("serve", "--handlers", "users,warehouse", env=cli_env(settings))

    assert code == 2
    assert "unknown handler set(s): warehouse" in err


@pytest.fixture
def own_nats(tmp_path):
    server = NatsServer(free_port(), tmp_path / "nats").start()
    yield server
    server.stop()


async def test_sigterm_drains_in_flight_requests_and_exits_zero(settings, database, own_nats):
    # The deployed grace period: 40 argon2 hashes may take longer than the suite's short one
    # on a busy machine, and a request still unanswered when it runs out is refused with 503.
    serving = await asyncio.create_subprocess_exec(
        ATLANTIC, "serve", "--handlers", "users",
        env=cli_env(settings, ATLANTIC_NATS_URL=own_nats.url,
                    ATLANTIC_GRACEFUL_TIMEOUT_SECONDS="15"))
    client = await AtlanticClient.connect(own_nats.url)
    try:
        await wait_until_answering(client.nc, "users", seconds=30,
                                   exited=lambda: serving.returncode is not None)
        requests = [
            asyncio.create_task(client.call("atlantic.users.register", {
                "email": unique_email("drain"), "password": TEST_PASSWORD, "name": "D"},
                timeout=20))
            for _ in range(40)
        ]
        await asyncio.sleep(0.1)  # the requests are in flight (argon2 takes ~25 ms each, 2 cores)

        serving.send_signal(signal.SIGTERM)
        replies = await asyncio.gather(*requests)
        exit_code = await asyncio.wait_for(serving.wait(), 30)
    finally:
        if serving.returncode is None:
            serving.kill()
        await client.close()

    assert [r.status for r in replies] == [200] * 40
    assert exit_code == 0


async def test_up_starts_nats_and_serves_register_login_and_me(settings, tmp_path):
    """What a developer does on a fresh clone: `atlantic up`, then calls from another shell."""
    nats_url = f"nats://127.0.0.1:{free_port()}"  # nothing answers there: up must start NATS
    dsn = settings.postgres_dsn.replace(f"atlantic_test_{RUN_ID}", f"atlantic_test_{RUN_ID}_up")
    env = cli_env(settings, ATLANTIC_NATS_URL=nats_url, ATLANTIC_POSTGRES_DSN=dsn,
                  ATLANTIC_DATA_DIR=str(tmp_path), ATLANTIC_LOG_LEVEL="WARNING")
    up = await asyncio.create_subprocess_exec(
        ATLANTIC, "up", env=env, stdout=asyncio.subprocess.PIPE)
    try:
        banner = ""
        while "Atlantic is running" not in banner:
            line = await asyncio.wait_for(up.stdout.readline(), 60)
            assert line, f"atlantic up exited early: {banner}"
            banner += line.decode()
        passwords = tmp_path / PASSWORDS_FILE
        assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
        assert set(json.loads(passwords.read_text())) == {*HANDLER_SETS, CLIENT_USER, "admin"}
        assert not await anonymous_may_publish_events(nats_url)
        email = unique_email("up")  # `call` below connects as the client user
        code, out, _ = await run_cli("call", "atlantic.users.register", json.dumps(
            {"email": email, "password": TEST_PASSWORD, "name": "Up"}), env=env)
        assert code == 0, out
        code, out, _ = await run_cli("call", "atlantic.users.login", json.dumps(
            {"email": email, "password": TEST_PASSWORD}), env=env)
        assert code == 0, out
        code, out, _ = await run_cli("call", "atlantic.users.me", "--token",
                                     json.loads(out)["token"], env=env)
        assert code == 0, out
        assert json.loads(out)["email"] == email
        assert "admin@example.com" in banner  # the default admin was created
        log = (tmp_path / "nats" / "nats-server.log").read_text()
        # every set (analytics too) has the grants it uses
        assert "Publish Violation" not in log and "Subscription Violation" not in log, log
    finally:
        up.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(up.wait(), 30)
        await drop_database(dsn)
    assert exit_code == 0
    code, _, err = await run_cli("call", "atlantic.users.me", env=env)
    assert code == 3, err  # the NATS server up started is gone with it


async def test_up_says_plainly_when_the_nats_server_there_is_open_to_anyone(
        settings, own_nats, tmp_path, capsys):
    from runtime.tools.cli import start_or_check_nats

    passwords = Passwords.ensure(tmp_path / "secured")
    secured = NatsServer(free_port(), tmp_path / "secured-nats", config=NATS_CONF,
                         env=passwords.environment()).start()
    try:
        assert await start_or_check_nats(settings.model_copy(update={
            "nats_url": secured.url, "data_dir": str(tmp_path / "secured")})) is None
        quiet = capsys.readouterr()
        assert await start_or_check_nats(settings.model_copy(update={
            "nats_url": own_nats.url})) is None
        warned = capsys.readouterr()
    finally:
        secured.stop()

    assert "WARNING" not in quiet.err + quiet.out
    assert f"WARNING: the NATS server at {own_nats.url} lets a client with no credentials" \
        in warned.err
    assert "atlantic.events.>" in warned.err


@pytest.mark.fast
def test_the_readme_lists_every_setting():
    from runtime.settings import Settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()

    names = [field.alias or f"ATLANTIC_{name.upper()}"  # OTEL_* go by their own names
             for name, field in Settings.model_fields.items()]
    missing = [name for name in names if f"`{name}`" not in readme]
    assert not missing, f"add these settings to the README's table: {missing}"


async def test_serve_with_no_nats_answering_fails_with_a_clear_error(settings, database):
    nowhere = f"nats://127.0.0.1:{free_port()},nats://127.0.0.1:{free_port()}"
    env = cli_env(settings, ATLANTIC_NATS_URL=nowhere, ATLANTIC_NATS_CONNECT_TIMEOUT_SECONDS="1")

    code, _, err = await run_cli("serve", "--handlers", "users", env=env)

    assert code == 3, err
    assert "no NATS server answered at nats://127.0.0.1:" in err


async def test_serve_creates_its_database_and_takes_a_list_of_nats_servers(settings, own_nats):
    """A fresh deployment: the database does not exist yet and one listed server is down."""
    dsn = settings.postgres_dsn.replace(f"atlantic_test_{RUN_ID}",
                                        f"atlantic_test_{RUN_ID}_serve")
    servers = f"nats://127.0.0.1:{free_port()}, {own_nats.url}"
    serving = await asyncio.create_subprocess_exec(
        ATLANTIC, "serve", "--handlers", "users",
        env=cli_env(settings, ATLANTIC_NATS_URL=servers, ATLANTIC_POSTGRES_DSN=dsn))
    client = await AtlanticClient.connect(own_nats.url)
    try:
        reply = None
        for _ in range(300):
            reply = await client.call_or_none("atlantic.users.register", {
                "email": unique_email("serve"), "password": TEST_PASSWORD, "name": "S"},
                timeout=0.5)
            if reply is not None:
                break
            assert serving.returncode is None, "atlantic serve exited"
            await asyncio.sleep(0.1)
    finally:
        serving.send_signal(signal.SIGTERM)
        await asyncio.wait_for(serving.wait(), 30)
        await client.close()
        await drop_database(dsn)

    assert reply is not None and reply.status == 200, reply
