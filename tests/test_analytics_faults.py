"""Analytics ingest under faults: failed inserts, a malformed event, and the ingest process
killed with SIGKILL mid-stream. Nothing is lost and nothing is counted twice."""

import asyncio
import json
import signal
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from conftest import RUN_ID, eventually
from test_analytics import drained, publish_all
from test_runtime import ATLANTIC, cli_env

from contracts import analytics as contract
from contracts.base import new_id
from contracts.events import OrderCreated, OrderItem
from runtime.client import AtlanticClient
from runtime.services import NatsServer, free_port
from storage import deadletters


def orders_in(start: datetime, n: int, tag: str) -> list[OrderCreated]:
    return [OrderCreated(order_id=f"{tag}-{i}", customer_id=f"c-{tag}", total_price=price,
                         items=[OrderItem(product_id="p-1", quantity=1, price=price)],
                         timestamp=start + timedelta(seconds=i))
            for i in range(n) for price in [Decimal(i % 997 + 1) / 100]]


def window(start: datetime) -> dict:
    return {"from": start.isoformat(), "to": (start + timedelta(days=1)).isoformat()}


def as_messages(events, again: int = 0) -> list[tuple[str, bytes, str]]:
    messages = [(e.subject, e.model_dump_json().encode(), e.event_id) for e in events]
    return messages + [(s, b, f"again-{m}") for s, b, m in messages[:again]]


async def summary(admin, start: datetime) -> dict:
    reply = await admin.call(contract.SUMMARY, window(start))
    assert reply.ok, reply.body
    return reply.body


def past_day(days_ago: int) -> datetime:
    return (datetime.now(UTC) - timedelta(days=days_ago)).replace(hour=0, minute=0, second=0,
                                                                   microsecond=0)


async def test_a_malformed_event_is_dead_lettered_and_the_rest_flow(system, client, admin):
    start = past_day(50)
    good = orders_in(start, 40, f"mal-{RUN_ID}")
    no_total = json.loads(good[0].model_dump_json()) | {"orderId": "broken", "eventId": new_id()}
    del no_total["totalPrice"]
    bad = [("atlantic.events.order.created", b"{not json", f"bad-json-{RUN_ID}"),
           ("atlantic.events.order.created", json.dumps(no_total).encode(), f"bad-{RUN_ID}")]

    await publish_all(client, bad[:1] + as_messages(good[:20]) + bad[1:] + as_messages(good[20:]))
    await drained(system)

    letters = {d.event_id: d for d in await deadletters.recent(
        system.context.get("pool"), "analytics-ingest", 1_000)}
    assert "not valid JSON" in letters[f"bad-json-{RUN_ID}"].error
    assert "totalPrice" in letters[f"bad-{RUN_ID}"].error
    body = await summary(admin, start)
    assert body["orders"] == 40
    assert Decimal(str(body["revenue"])) == sum(e.total_price for e in good)


@pytest.mark.parametrize("fails", ["before", "after"])
async def test_a_failed_insert_is_retried_without_loss_or_double_counting(
        system, client, admin, monkeypatch, fails):
    """ClickHouse refusing the insert, or accepting it while the ack is lost (a fault a real
    server cannot be made to produce on demand, hence the one wrapper)."""
    store = system.context.get("analytics")
    real, failures = store.insert_new_events, []

    async def flaky(rows):
        rows = list(rows)
        if not failures and rows:
            failures.append(len(rows))
            if fails == "after":
                await real(rows)
            raise ConnectionError("ClickHouse went away")
        return await real(rows)

    monkeypatch.setattr(store, "insert_new_events", flaky)
    start = past_day(60 + (fails == "after"))
    events = orders_in(start, 300, f"flaky-{fails}-{RUN_ID}")

    await publish_all(client, as_messages(events, again=30))
    await drained(system)

    assert failures  # the fault did happen
    body = await summary(admin, start)
    assert body["orders"] == 300
    assert Decimal(str(body["revenue"])) == sum(e.total_price for e in events)


async def test_ingest_killed_mid_stream_loses_nothing_and_counts_nothing_twice(
        settings, database, admin, tmp_path):
    nats = NatsServer(free_port(), tmp_path / "nats").start()
    env = cli_env(settings, ATLANTIC_NATS_URL=nats.url, ATLANTIC_DATA_DIR=str(tmp_path / "data"),
                  ATLANTIC_ANALYTICS_BATCH_SIZE="500", ATLANTIC_ANALYTICS_CONSUMER="ingest-kill",
                  ATLANTIC_ANALYTICS_ACK_WAIT_SECONDS="3")
    client = await AtlanticClient.connect(nats.url)
    signed_in = client.signed_in(admin.token)
    start = past_day(70)
    events = orders_in(start, 20_000, f"kill-{RUN_ID}")
    serving = None
    try:
        serving = await start_analytics(env, client)
        await publish_all(client, as_messages(events, again=2_000))

        async def some_ingested():
            reply = await signed_in.call(contract.SUMMARY, window(start))
            return reply.ok and 0 < reply.body["orders"] < len(events)

        await eventually(some_ingested, seconds=30, interval=0.02)
        serving.send_signal(signal.SIGKILL)
        await serving.wait()
        serving = await start_analytics(env, client)

        async def all_ingested():
            reply = await signed_in.call(contract.SUMMARY, window(start))
            return reply.ok and reply.body["ingest"]["pending"] == 0 and reply.body

        body = await eventually(all_ingested, seconds=60, interval=0.2)
        await asyncio.sleep(4)  # past the ack wait: a batch still in flight would show now
        body = await eventually(all_ingested, seconds=60, interval=0.2)
    finally:
        if serving and serving.returncode is None:
            serving.send_signal(signal.SIGTERM)
            await asyncio.wait_for(serving.wait(), 30)
        await client.close()
        nats.stop()

    assert body["orders"] == len(events)
    assert Decimal(str(body["revenue"])) == sum(e.total_price for e in events)


async def start_analytics(env: dict, client: AtlanticClient) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(ATLANTIC, "serve", "--handlers", "analytics",
                                                   env=env)

    async def answers():
        try:
            reply = await client.call(contract.SUMMARY, {}, timeout=0.5)
        except Exception:
            return False
        return reply.status in (200, 401)

    await eventually(answers, seconds=30, interval=0.1)
    return process

