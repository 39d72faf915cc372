"""Analytics as an administrator sees it: a generated history of thousands of orders (cancels,
returns, refunds, duplicates, out-of-order arrivals) goes through JetStream into ClickHouse, and
every query's answer equals a plain Python recomputation, to the cent. The same query tests run
on chDB always, and on a ClickHouse server when ATLANTIC_CLICKHOUSE_URL is set."""

import asyncio
import importlib
import os
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import analytics_data as ref
import pytest
from support import RUN_ID, drained, eventually, publish_all

from contracts import analytics as contract
from runtime.tools.client import Reply
from storage.analytics import T, schema

ORDERS = 2_500


@pytest.fixture(scope="module")
async def history(system, client) -> ref.History:
    start = (datetime.now(UTC) - timedelta(days=20)).replace(minute=0, second=0, microsecond=0)
    history = ref.generate(RUN_ID, start, orders=ORDERS)
    messages = ref.wire_messages(history, random.Random(7))
    await publish_all(client, messages)
    await drained(system)
    # Later, events already stored arrive again (a producer's retry outside the dedupe window).
    await publish_all(client, [(s, b, f"late-{i}") for i, (s, b, _) in enumerate(messages[:300])])
    await drained(system)
    return history


class ServerQueries:
    """The same handlers over another store: the history inserted through the same rows."""

    def __init__(self, store):
        self.store = store

    async def call(self, subject: str, payload: dict) -> Reply:
        h = importlib.import_module("handlers.analytics.requests")

        request, handler = {
            contract.SUMMARY: (contract.Summary, h.summary),
            contract.TIMESERIES: (contract.Timeseries, h.timeseries),
            contract.TOP_PRODUCTS: (contract.TopProducts, h.top_products),
            contract.FUNNEL: (contract.Funnel, h.funnel),
            contract.INVENTORY: (contract.InventoryQuery, h.inventory),
            contract.USERS: (contract.Users, h.users),
        }[subject]
        kwargs = {"ingest": _NoIngest()} if subject == contract.SUMMARY else {}
        reply = await handler(request.model_validate(payload), None, self.store, **kwargs)
        return Reply(200, reply.model_dump(mode="json"))


class _NoIngest:
    async def pending(self):
        return None


@pytest.fixture(scope="module", params=["chdb", "clickhouse-connect", "server"])
async def queries(request, system, history, admin):
    """chdb: the running system. clickhouse-connect: the server backend's client over the same
    in-process engine (another database). server: a ClickHouse server, when one is configured."""
    if request.param == "chdb":
        yield admin
        return
    import clickhouse_connect

    from storage.analytics import AnalyticsStore
    from storage.analytics.backends import SESSION_SETTINGS, ServerBackend
    from storage.analytics.rows import row

    if request.param == "server":
        if not (url := os.environ.get("ATLANTIC_CLICKHOUSE_URL")):
            pytest.skip("ATLANTIC_CLICKHOUSE_URL is not set")
        backend = ServerBackend.connect(url)
    else:
        engine = system.context.get("analytics").backend.path
        backend = ServerBackend(clickhouse_connect.get_client(
            dsn=f"chdb://{engine}", settings=SESSION_SETTINGS), f"atlantic_cc_{RUN_ID}")
        backend.max_threads = 1  # chDB takes one caller at a time
    store = AnalyticsStore(backend, 400)
    await store.start()
    now = datetime.now(UTC)
    rows = [row(e.model_dump_json().encode(), subject=e.subject, stream_seq=0, published_at=now)
            for e in history.events]
    for i in range(0, len(rows), 5_000):
        await store.insert_new_events(rows[i:i + 5_000])
    yield ServerQueries(store)
    if request.param == "clickhouse-connect":
        await store._rows(f"DROP DATABASE {store.db}")
    await store.close()


async def ask(queries, subject: str, payload: dict) -> dict:
    reply = await queries.call(subject, payload)
    assert reply.ok, reply.body
    return ref.exact(reply.body)


async def test_summary_equals_the_recomputation(queries, history):
    body = await ask(queries, contract.SUMMARY, history.wire())

    expected = ref.summary(history)
    assert {k: body[k] for k in expected} == expected
    assert expected["orders"] > 1_000 and expected["refunds"] > 0 and expected["returned"] > 0


@pytest.mark.parametrize("metric", ["revenue", "orders", "units", "active_users"])
@pytest.mark.parametrize("granularity,step", [("hour", 3_600), ("day", 86_400)])
async def test_timeseries_equals_the_recomputation(queries, history, metric, granularity, step):
    body = await ask(queries, contract.TIMESERIES,
                     history.wire() | {"metric": metric, "granularity": granularity})

    got = [(datetime.fromisoformat(p["start"]), p["value"]) for p in body["points"]]
    expected = [(datetime.fromisoformat(s), v) for s, v in ref.timeseries(history, metric, step)]
    assert got == expected
    assert body["approximate"] is False  # a window of a few days: exact


async def test_minute_timeseries_over_an_odd_window(queries, history):
    start = history.start + timedelta(hours=5, seconds=17, milliseconds=250)
    window = ref.History(start, start + timedelta(hours=3), history.events)

    body = await ask(queries, contract.TIMESERIES,
                     window.wire() | {"metric": "revenue", "granularity": "minute"})

    expected = ref.timeseries(window, "revenue", 60)
    assert [(datetime.fromisoformat(p["start"]), p["value"]) for p in body["points"]] == [
        (datetime.fromisoformat(s), v) for s, v in expected]


@pytest.mark.parametrize("by", ["revenue", "units"])
async def test_top_products_equal_the_recomputation(queries, history, by):
    body = await ask(queries, contract.TOP_PRODUCTS, history.wire() | {"by": by, "limit": 15})

    assert body["products"] == ref.top_products(history, by, 15)


async def test_funnels_equal_the_recomputation(queries, history):
    body = await ask(queries, contract.FUNNEL, history.wire())

    expected = ref.funnel(history)
    assert body == expected
    assert expected["orders"][-1]["count"] > 0 and expected["shoppers"][-1]["count"] > 0


@pytest.mark.parametrize("late_start", [timedelta(0), timedelta(hours=13, milliseconds=250)])
async def test_a_window_ending_after_every_event_equals_the_recomputation(
        queries, history, monkeypatch, late_start):
    """A window that ends after every shopper's last step and every product's last stock report
    (as one ending now does) is counted from each shopper's latest moments and each product's
    latest levels: on the store holding the history alone, no query reads the shoppers' events
    or the daily stock levels. (The running system's store holds other
    tests' events too, some later; it may count from the events, with the same answer.)"""
    last = max(e.timestamp for e in history.events)
    window = ref.History(history.start + late_start, last + timedelta(milliseconds=1),
                         history.events)
    asked = []
    if isinstance(queries, ServerQueries):
        engine = queries.store.backend.query
        monkeypatch.setattr(queries.store, "reuse_seconds", 0)

        def recording(sql, params):
            asked.append(sql)
            return engine(sql, params)

        monkeypatch.setattr(queries.store.backend, "query", recording)

    funnel = await ask(queries, contract.FUNNEL, window.wire())
    inventory = await ask(queries, contract.INVENTORY,
                          window.wire() | {"lowStockThreshold": 40, "limit": 100})

    assert funnel == ref.funnel(window)
    assert funnel["shoppers"][-1]["count"] > 0
    assert inventory == ref.inventory(window, 40, 100)
    if isinstance(queries, ServerQueries):
        assert any(".shoppers" in sql for sql in asked)
        assert not [sql for sql in asked if "'ProductViewed'" in sql and ".events" in sql]
        assert any(".stock_latest" in sql and "argMaxIfMerge" in sql for sql in asked)
        assert not [sql for sql in asked if ".stock_levels" in sql]


async def test_inventory_equals_the_recomputation(queries, history):
    body = await ask(queries, contract.INVENTORY,
                     history.wire() | {"lowStockThreshold": 40, "limit": 100})

    expected = ref.inventory(history, 40, 100)
    assert body == expected
    assert expected["lowStock"] and expected["lowStockAlerts"] > 0


async def test_new_pre_aggregates_are_filled_from_stored_events(system, admin, history,
                                                                monkeypatch):
    # As on an upgrade that adds them: the tables and their views are missing, so are the
    # events' projections, and events are stored.
    store = system.context.get("analytics")
    monkeypatch.setattr(store, "reuse_seconds", 0)  # every answer below asked afresh
    store._recent.clear()
    for derived in schema.DERIVED:
        await store._rows(f"DROP VIEW {{db}}.{derived.table}_mv")
        await store._rows(f"DROP TABLE {{db}}.{derived.table}")
    for name in schema.PROJECTIONS:
        await store._rows(f"ALTER TABLE {{db}}.events DROP PROJECTION {name}"
                          " SETTINGS mutations_sync = 2")

    await store.start()

    async def projected_everywhere():
        parts = await store._rows(
            "SELECT countIf(NOT has(projections, {name:String})) AS missing"
            " FROM system.parts WHERE database = {db:String} AND table = 'events' AND active",
            db=store.db, name=schema.HOURLY_TOTALS)
        return parts[0]["missing"] == 0

    await eventually(projected_everywhere, seconds=60)
    summary = await ask(admin, contract.SUMMARY, history.wire())
    assert {k: summary[k] for k in ref.summary(history)} == ref.summary(history)
    series = await ask(admin, contract.TIMESERIES, history.wire() | {"metric": "active_users",
                                                                    "granularity": "hour"})
    assert [(datetime.fromisoformat(p["start"]), p["value"]) for p in series["points"]] == [
        (datetime.fromisoformat(s), v) for s, v in ref.timeseries(history, "active_users", 3_600)]

    inventory = await ask(admin, contract.INVENTORY, history.wire() | {"lowStockThreshold": 40,
                                                                         "limit": 100})
    assert inventory == ref.inventory(history, 40, 100)
    assert await ask(admin, contract.USERS, history.wire()) == ref.users(history)
    assert await ask(admin, contract.FUNNEL, history.wire()) == ref.funnel(history)
    top = await ask(admin, contract.TOP_PRODUCTS, history.wire() | {"by": "revenue", "limit": 15})
    assert top["products"] == ref.top_products(history, "revenue", 15)


async def test_a_server_without_projection_settings_gets_the_projection_plain(
        system, admin, history, monkeypatch):
    """ClickHouse before 25.12 has no WITH SETTINGS for a projection (a syntax error there):
    the projection is added with the table's granularity, and the answers stay the same."""
    store = system.context.get("analytics")
    monkeypatch.setattr(store, "reuse_seconds", 0)
    engine = store.backend.query

    def older_server(sql, params):
        if " WITH SETTINGS (" in sql:
            raise RuntimeError("Syntax error: failed at position 1 (WITH)")
        return engine(sql, params)

    async def daily_moves() -> list[dict]:
        return await store._rows(
            "SELECT name FROM system.projections WHERE database = {db:String}"
            " AND table = 'events' AND name = {name:String}", db=store.db,
            name=schema.DAILY_MOVES)

    try:
        await store._rows(f"ALTER TABLE {{db}}.events DROP PROJECTION {schema.DAILY_MOVES}"
                          " SETTINGS mutations_sync = 2")
        monkeypatch.setattr(store.backend, "query", older_server)
        await store.start()
        assert await daily_moves()
        inventory = await ask(admin, contract.INVENTORY,
                              history.wire() | {"lowStockThreshold": 40, "limit": 100})
        assert inventory == ref.inventory(history, 40, 100)
    finally:  # the rest of the run with the projection as a current engine has it
        monkeypatch.setattr(store.backend, "query", engine)
        await store._rows(f"ALTER TABLE {{db}}.events DROP PROJECTION IF EXISTS"
                          f" {schema.DAILY_MOVES} SETTINGS mutations_sync = 2")
        await store.start()
    assert await daily_moves()


async def test_every_table_but_first_orders_keeps_the_configured_retention(system, settings):
    store = system.context.get("analytics")
    tables = {r["name"]: r["engine_full"] for r in await store._rows(
        "SELECT name, engine_full FROM system.tables"
        " WHERE database = {db:String} AND engine LIKE '%MergeTree'", db=store.db)}

    retention = f"toIntervalDay({settings.analytics_retention_days})"
    assert {name for name, engine in tables.items() if retention in engine} == set(tables) - {
        "first_orders"}
    assert "TTL" not in tables["first_orders"]  # new versus returning needs every first order


async def test_inserted_parts_are_packed_and_merged_ones_stored_in_full(system, history):
    """An insert writes one archive per table (packed storage), not a dozen files each; what
    merges make is stored as usual."""
    store = system.context.get("analytics")
    parts = await store._rows(
        "SELECT table, min_block_number = max_block_number AS inserted, part_storage_type"
        " FROM system.parts WHERE database = {db:String}", db=store.db)  # inactive ones too

    inserted = {p["part_storage_type"] for p in parts if p["inserted"]}
    merged = {p["part_storage_type"] for p in parts if not p["inserted"]}
    assert {p["table"] for p in parts if p["inserted"]} >= {"events", "order_lines"}
    assert inserted == {"Packed"}
    assert merged <= {"Full"}


async def test_users_equal_the_recomputation(queries, history):
    body = await ask(queries, contract.USERS, history.wire())

    expected = ref.users(history)
    assert body == expected
    assert expected["newCustomers"] > 0 and expected["returningCustomers"] > 0


async def test_windows_with_partial_hours_equal_the_recomputation(queries, history):
    """Whole hours from the pre-aggregates, the partial first and last ones from the events."""
    window = ref.History(history.start + timedelta(minutes=17, milliseconds=250),
                         history.end - timedelta(minutes=5), history.events)

    summary = await ask(queries, contract.SUMMARY, window.wire())
    assert {k: summary[k] for k in ref.summary(window)} == ref.summary(window)
    assert await ask(queries, contract.USERS, window.wire()) == ref.users(window)


async def test_distinct_people_over_long_windows_are_estimates_that_say_so(system, admin):
    """30,000 people, each signed in on one of five days (a fifth of them a day), every third
    of them ordering: the exact figures are known without a recomputation."""
    store = system.context.get("analytics")
    people = 30_000
    start = (datetime.now(UTC) - timedelta(days=200)).replace(hour=0, minute=0, second=0,
                                                              microsecond=0)
    await store._rows(
        "INSERT INTO {db}.events (event_id, event, subject, timestamp, user_id, order_id)"
        " SELECT concat({tag:String}, toString(number)) AS event_id,"
        "  if(number % 3 = 0, 'OrderCreated', 'UserLoggedIn') AS event, 'bench' AS subject,"
        f"  {{start:{T}}} + toIntervalSecond(number % 5 * 86400 + number % 80000),"
        "  concat({tag:String}, 'u', toString(number)), if(number % 3 = 0, event_id, '')"
        " FROM numbers({people:UInt32})", tag="many-", start=start, people=people)

    def figures(days: int) -> dict:
        return {"from": ref.iso(start), "to": ref.iso(start + timedelta(days=days))}

    # Up to three days: exact.
    exact = await ask(admin, contract.USERS, figures(3))
    assert (exact["activeUsers"], exact["customers"], exact["approximate"]) == (
        people * 3 // 5, people * 3 // 5 // 3, False)

    # Longer: uniqCombined(12) estimates (standard error ~1.6%; the ids are the same in every
    # run, so is the estimate: the bound is ~3 standard errors), and the reply says so.
    estimate = await ask(admin, contract.USERS, figures(5))
    assert estimate["approximate"] is True
    assert abs(estimate["activeUsers"] - people) <= people * 0.05
    assert abs(estimate["customers"] - people // 3) <= people // 3 * 0.05
    assert estimate["newCustomers"] == people // 3  # exact: first orders
    daily = await ask(admin, contract.TIMESERIES, figures(5) | {"metric": "active_users",
                                                                "granularity": "day"})
    assert daily["approximate"] is True
    assert [datetime.fromisoformat(p["start"]) for p in daily["points"]] == [
        start + timedelta(days=d) for d in range(5)]
    for point in daily["points"]:
        assert abs(point["value"] - people // 5) <= people // 5 * 0.05


async def test_hourly_estimates_are_kept_until_their_hour_is_ingested_into(system, admin,
                                                                           monkeypatch):
    """Over a long window, each whole hour's estimate of people is computed once and kept; an
    event ingested later into that hour has it computed again."""
    store = system.context.get("analytics")
    monkeypatch.setattr(store, "reuse_seconds", 0)  # every answer below asked afresh
    hour = (datetime.now(UTC) - timedelta(days=250)).replace(minute=0, second=0, microsecond=0)
    sketches_read = []
    engine = store.backend.query

    def recording(sql, params):
        if ".user_activity" in sql and "Merge(12)(users)" in sql:
            sketches_read.append(sql)
        return engine(sql, params)

    monkeypatch.setattr(store.backend, "query", recording)

    async def people_at(tag: str, n: int, minutes: int) -> None:
        await store._rows(
            "INSERT INTO {db}.events (event_id, event, subject, timestamp, user_id)"
            " SELECT concat({tag:String}, toString(number)), 'UserLoggedIn', 'bench',"
            f"  {{at:{T}}}, concat({{tag:String}}, 'u', toString(number))"
            " FROM numbers({n:UInt32})", tag=f"{tag}-{RUN_ID}-", n=n,
            at=hour + timedelta(minutes=minutes))

    async def series() -> dict:
        body = await ask(admin, contract.TIMESERIES, {
            "from": ref.iso(hour - timedelta(days=2)), "to": ref.iso(hour + timedelta(days=2)),
            "metric": "active_users", "granularity": "hour"})
        assert body["approximate"] is True
        return {datetime.fromisoformat(p["start"]): p["value"] for p in body["points"]
                if p["value"]}

    await people_at("kept", 10, 10)
    assert await series() == {hour: 10}
    read = len(sketches_read)
    assert read > 0

    assert await series() == {hour: 10}
    assert len(sketches_read) == read  # kept: no sketch read again

    await people_at("later", 5, 20)
    assert await series() == {hour: 15}
    assert len(sketches_read) > read


async def test_identical_queries_within_a_second_are_answered_once(system, admin, history,
                                                                   monkeypatch):
    store = system.context.get("analytics")
    store._recent.clear()
    asked = []
    engine = store.backend.query

    def counting(sql, params):  # passes every query on; counts the summary's
        if "sumIf(n, event = 'OrderCreated')" in sql:
            asked.append(params["start"])
        return engine(sql, params)

    monkeypatch.setattr(store.backend, "query", counting)

    replies = await asyncio.gather(*(ask(admin, contract.SUMMARY, history.wire())
                                     for _ in range(5)))
    assert len(asked) == 1
    assert all(r["revenue"] == ref.summary(history)["revenue"] for r in replies)

    await ask(admin, contract.SUMMARY, {"from": ref.iso(history.start + timedelta(hours=1)),
                                        "to": ref.iso(history.end)})
    assert len(asked) == 2  # another window: asked

    async def asked_again():
        await ask(admin, contract.SUMMARY, history.wire())
        return len(asked) == 3

    await eventually(asked_again, seconds=10, interval=0.2)  # once the second has passed


async def test_a_window_holding_nothing_answers_zeros(queries, history):
    quiet = {"from": "2001-01-01T00:00:00Z", "to": "2001-01-02T00:00:00Z"}

    body = await ask(queries, contract.SUMMARY, quiet)

    assert (body["orders"], body["revenue"], body["averageOrderValue"]) == (0, 0, 0)


async def test_summary_reports_the_ingest_lag(client, admin, system, history):
    """An event stored within the last minute gives the lag a value (None means none was)."""
    before = datetime.now(UTC).replace(microsecond=0)
    tracked = await client.call(contract.TRACK, {
        "anonymousId": f"anon-{RUN_ID}-lag", "events": [{"type": "product_viewed",
                                                         "productId": "tea-3"}]})
    assert tracked.ok, tracked.body
    await drained(system)

    body = await ask(admin, contract.SUMMARY, {})

    assert body["ingest"]["pending"] >= 0  # others' events may be arriving meanwhile
    assert datetime.fromisoformat(body["ingest"]["lastIngestedAt"]) >= before
    assert body["ingest"]["lagSeconds"] is not None and body["ingest"]["lagSeconds"] >= 0


# --- bad parameters, permissions -------------------------------------------------------------

@pytest.mark.parametrize("subject,payload,fields", [
    (contract.SUMMARY, {"from": "2024-02-01T00:00:00Z", "to": "2024-01-01T00:00:00Z"}, {"to"}),
    (contract.SUMMARY, {"from": "2020-01-01T00:00:00Z", "to": "2024-01-01T00:00:00Z"}, {"to"}),
    (contract.SUMMARY, {"from": "2024-01-01T00:00:00"}, {"from"}),  # no time zone
    (contract.TIMESERIES, {"metric": "profit"}, {"metric"}),
    (contract.TIMESERIES, {"metric": "orders", "granularity": "second"}, {"granularity"}),
    (contract.TIMESERIES, {"metric": "orders", "granularity": "minute",
                           "from": "2024-01-01T00:00:00Z", "to": "2024-01-05T00:00:00Z"},
     {"granularity"}),
    (contract.TOP_PRODUCTS, {"limit": 1_000_000}, {"limit"}),
    (contract.TOP_PRODUCTS, {"limit": 0}, {"limit"}),
    (contract.TOP_PRODUCTS, {"by": "revenue DESC; DROP TABLE atlantic.events"}, {"by"}),
    (contract.TIMESERIES, {"metric": "revenue') OR 1=1 --"}, {"metric"}),
    (contract.SUMMARY, {"from": "2024-01-01'; DROP TABLE atlantic.events; --"}, {"from"}),
    (contract.INVENTORY, {"lowStockThreshold": "1 OR 1=1", "limit": 10**12},
     {"lowStockThreshold", "limit"}),
    (contract.USERS, {"since": "yesterday"}, {"since"}),
])
async def test_bad_query_parameters_get_field_level_422s(admin, subject, payload, fields):
    reply = await admin.call(subject, payload)

    assert reply.status == 422, reply.body
    assert reply.error_fields == fields


async def test_queries_are_for_administrators(customer, client):
    for subject in (contract.SUMMARY, contract.TIMESERIES, contract.TOP_PRODUCTS,
                    contract.FUNNEL, contract.INVENTORY, contract.USERS):
        assert (await customer.call(subject, {"metric": "orders"})).status == 403
        assert (await client.call(subject, {"metric": "orders"})).status == 401


# --- track ---------------------------------------------------------------------------------

async def test_track_publishes_behaviour_events_for_a_signed_in_shopper(customer, admin, system):
    me = (await customer.call("atlantic.users.me")).body
    injection = "'); DROP TABLE atlantic.events; --"
    events = [{"type": "product_viewed", "productId": "tea-1"},
              {"type": "added_to_cart", "productId": "tea-1", "quantity": 2},
              {"type": "search", "query": injection},
              {"type": "checkout_started", "itemCount": 1, "cartValue": 12.5}]

    reply = await customer.call(contract.TRACK, {"events": events})

    assert reply.status == 200, reply.body
    assert reply.body["accepted"] == 4
    store = system.context.get("analytics")

    async def stored():
        rows = await store._rows(
            "SELECT event, user_id, raw FROM {db}.events WHERE event_id IN {ids:Array(String)}",
            ids=reply.body["eventIds"])
        return rows if len(rows) == 4 else None

    rows = await eventually(stored)
    assert {r["event"] for r in rows} == {"ProductViewed", "AddedToCart", "Searched",
                                          "CheckoutStarted"}
    assert {r["user_id"] for r in rows} == {me["userId"]}
    assert any(injection in r["raw"] for r in rows)


async def test_track_retried_with_client_ids_counts_once(client, system):
    anon = f"anon-{RUN_ID}-retry"
    body = {"anonymousId": anon,
            "events": [{"type": "product_viewed", "productId": "tea-2", "clientEventId": "v1"}]}

    first = await client.call(contract.TRACK, body)
    second = await client.call(contract.TRACK, body)

    assert first.body["eventIds"] == second.body["eventIds"]
    store = system.context.get("analytics")

    async def count():
        rows = await store._rows(
            "SELECT count() AS n FROM {db}.events WHERE anonymous_id = {a:String}", a=anon)
        return rows[0]["n"] or None

    assert await eventually(count) == 1


@pytest.mark.parametrize("payload,fields", [
    ({"events": [{"type": "product_viewed", "productId": "x"}]}, None),  # anonymous, no id
    ({"anonymousId": "a1", "events": []}, {"events"}),
    ({"anonymousId": "a1", "events": [{"type": "purchase", "productId": "x"}]}, {"events.0"}),
    ({"anonymousId": "a1", "events": [{"type": "search", "query": "q" * 201}]},
     {"events.0.search.query"}),
    ({"anonymousId": "a1", "events": [{"type": "product_viewed", "productId": "x"}] * 101},
     {"events"}),
    ({"anonymousId": "a b'", "events": [{"type": "product_viewed", "productId": "x"}]},
     {"anonymousId"}),
    ({"anonymousId": "a1", "userId": "someone-else",
      "events": [{"type": "product_viewed", "productId": "x"}]}, {"userId"}),
])
async def test_track_refuses_bad_batches(client, payload, fields):
    reply = await client.call(contract.TRACK, payload)

    assert 400 <= reply.status < 500, reply.body
    if fields is not None:
        assert reply.status == 422
        assert reply.error_fields == fields


async def test_track_with_a_bad_token_is_refused(client):
    reply = await client.signed_in("not-a-token").call(
        contract.TRACK, {"events": [{"type": "product_viewed", "productId": "x"}]})

    assert reply.status == 401


def test_decimal_helpers_round_half_even():
    assert ref.ratio(1, 8) == Decimal("0.1250") and ref.ratio(1, 3, ref.CENT) == Decimal("0.33")
