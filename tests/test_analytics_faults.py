"""Analytics ingest under faults: failed inserts, a malformed event, and the ingest process
killed with SIGKILL mid-stream. Nothing is lost and nothing is counted twice."""

import json
import signal
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from support import (
    RUN_ID,
    as_messages,
    drained,
    eventually,
    orders_in,
    past_day,
    publish_all,
    summary,
    window,
    world_of_its_own,
)

from contracts import analytics as contract
from contracts.base import new_id
from contracts.events import STREAM, InventoryAdjusted, OrderCreated, OrderItem
from handlers.analytics.ingest import REPAIR_WINDOW_SECONDS
from storage import deadletters
from storage.analytics.rows import ch_time, row


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


async def derived_figures(admin, start: datetime) -> dict:
    """What the tables derived from the events say about one day: products, funnel, users,
    stock."""
    figures = {}
    for subject, extra in ((contract.TOP_PRODUCTS, {"limit": 5}), (contract.FUNNEL, {}),
                           (contract.USERS, {}), (contract.INVENTORY, {"limit": 5})):
        reply = await admin.call(subject, window(start) | extra)
        assert reply.ok, reply.body
        figures[subject] = reply.body
    return figures


async def test_an_insert_that_died_before_its_views_is_repaired_once(system, admin, monkeypatch):
    """A crash inside an insert, after the events were stored and before every view wrote its
    rows (a fault no server produces on demand: it is made here by deleting those rows)."""
    store = system.context.get("analytics")
    monkeypatch.setattr(store, "reuse_seconds", 0)  # every answer below asked afresh
    store._recent.clear()
    start, tag = past_day(80), f"repair-{RUN_ID}"
    product, price = f"p-{tag}", Decimal("12.50")
    events = [OrderCreated(order_id=f"o-{tag}", customer_id=f"c-{tag}", total_price=2 * price,
                           items=[OrderItem(product_id=product, quantity=2, price=price)],
                           timestamp=start + timedelta(hours=1)),
              InventoryAdjusted(product_id=product, delta=5, reason="count", on_hand=40,
                                available=38, timestamp=start + timedelta(hours=2))]
    await store.insert_new_events([
        row(e.model_dump_json().encode(), subject=e.subject, stream_seq=0,
            published_at=datetime.now(UTC)) for e in events])
    derived_rows = (("order_lines", "product_id", product), ("stock_levels", "product_id", product),
                    ("first_orders", "customer_id", f"c-{tag}"),
                    ("order_progress", "order_id", f"o-{tag}"),
                    ("active_users", "user_id", f"c-{tag}"),
                    ("user_activity", "toString(hour)", ch_time(start + timedelta(hours=1))[:19]),
                    ("shoppers", "shopper", f"c-{tag}"),
                    ("stock_latest", "product_id", product))

    async def delete(rows):
        for table, column, value in rows:
            await store._rows(f"ALTER TABLE {{db}}.{table} DELETE WHERE {column} = {{v:String}}"
                              " SETTINGS mutations_sync = 2", v=value)

    try:
        whole = await derived_figures(admin, start)
        await delete(derived_rows)
        assert (await derived_figures(admin, start)) != whole  # the views' rows are gone

        for _ in range(2):  # a second repair (another restart) changes nothing
            await store.repair_derived(REPAIR_WINDOW_SECONDS)
            assert await derived_figures(admin, start) == whole

        # The other way round: a view wrote its rows, the events did not get stored, and the
        # redelivered events make the views write the same rows again.
        for table, column, value in derived_rows:
            await store._rows(f"INSERT INTO {{db}}.{table} SELECT * FROM {{db}}.{table}"
                              f" WHERE {column} = {{v:String}}", v=value)
        assert await derived_figures(admin, start) == whole
    finally:  # this product's stock level would show in every later inventory answer
        await delete([("events", "product_id", product), *derived_rows])

    assert whole[contract.TOP_PRODUCTS]["products"] == [
        {"productId": product, "revenue": 25.0, "units": 2, "orders": 1}]
    assert whole[contract.FUNNEL]["orders"][0]["count"] == 1
    assert whole[contract.USERS]["newCustomers"] == 1
    assert {"productId": product, "onHand": 40, "available": 38, "unitsIn": 5, "unitsOut": 0,
            "unitsReserved": 0} in whole[contract.INVENTORY]["products"]


async def test_ingest_killed_mid_stream_loses_nothing_and_counts_nothing_twice(settings):
    async with world_of_its_own(settings, "ingest_kill", sets=["users"], in_process=True,
                                analytics_batch_size=500, analytics_consumer="ingest-kill",
                                analytics_ack_wait_seconds=3) as world:
        signed_in = world.admin
        start = past_day(70)
        events = orders_in(start, 20_000, f"kill-{RUN_ID}")
        await world.serve(["analytics"])
        await publish_all(world.client, as_messages(events, again=2_000))

        async def some_ingested():
            reply = await signed_in.call(contract.SUMMARY, window(start))
            return reply.ok and 0 < reply.body["orders"] < len(events)

        await eventually(some_ingested, seconds=30, interval=0.02)
        await world.stop("analytics", signal.SIGKILL)
        await world.serve(["analytics"])

        async def all_ingested():
            reply = await signed_in.call(contract.SUMMARY, window(start))
            return reply.ok and reply.body["ingest"]["pending"] == 0 and reply.body

        async def all_acked():
            """Every event delivered and acked: what the killed process held came back."""
            info = await world.client.nc.jetstream().consumer_info(STREAM, "ingest-kill")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(all_ingested, seconds=60, interval=0.2)
        await eventually(all_acked, seconds=60, interval=0.2)
        # A window no poll above asked for: figures computed now, not an answer reused from the
        # last second (storage.analytics.REUSE_SECONDS).
        body = await summary(signed_in, start, timedelta(days=1, seconds=1))
        figures = await derived_figures(signed_in, start)

    assert body["orders"] == len(events)
    assert Decimal(str(body["revenue"])) == sum(e.total_price for e in events)
    top = figures[contract.TOP_PRODUCTS]["products"]
    assert [(p["productId"], p["units"], p["orders"]) for p in top] == [
        ("p-1", len(events), len(events))]
    assert Decimal(str(top[0]["revenue"])) == sum(e.total_price for e in events)
    assert figures[contract.FUNNEL]["orders"][0]["count"] == len(events)
    assert figures[contract.USERS]["customers"] == 1

