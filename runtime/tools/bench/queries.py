"""Analytics storage measured directly in chDB, as its own process (chDB locks its directory):

    python -m runtime.tools.bench.queries dashboard DATA_DIR EVENTS REPEATS
        loads EVENTS synthetic events in bulk (INSERT ... SELECT FROM numbers(), straight into
        the events table, so the materialized views fill too) and times every dashboard query
        through AnalyticsStore, over the default 24-hour window and over all 30 days. A
        directory that already holds EVENTS events is reused (loading 10M takes a while), after
        AnalyticsStore.start has brought its tables up to date as on any upgrade. Identical
        queries are not shared here (each repeat runs). For the record of how the cost grows
        with history, run it with 100000000 too (on demand, not in CI: it loads for an hour).
    python -m runtime.tools.bench.queries lag DATA_DIR SINCE_ISO [UNTIL_ISO]
        event-to-insert lag of the events stamped from SINCE (to UNTIL): the event's own
        timestamp against the row's ingested_at, p50 and p99 in seconds. The bench stamps each
        event with the moment it was due to be sent, so a late send counts as lag too.
    python -m runtime.tools.bench.queries inserts DATA_DIR ORDERS COUNT [packed|full]
        the ingest's insert path alone: COUNT inserts of ORDERS orders' saga events each (four
        events an order) through AnalyticsStore.insert_new_events, in a fresh DATA_DIR; prints
        the CPU of the process (chDB's threads included) per insert (its dedupe query
        included, also timed on its own), and the files the inserts left. `full`: every part
        stored in full, as before packed parts, for a before/after in one build.
"""

import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta

from runtime.tools.loadgen import percentile
from storage.analytics import AnalyticsStore, schema

DAYS = 30
# One event per row number, 20 kinds in turn: an order is created at n (n % 20 in {0, 1}) and
# validated, paid, reserved at n + 2, n + 4, n + 6; some ship and deliver, some cancel.
LOAD = """
INSERT INTO {db}.events (event_id, event, subject, timestamp, order_id, user_id, anonymous_id,
    product_id, amount, status, quantity, on_hand, available, items, stream_seq, published_at, raw)
SELECT
    'e' || toString(number) AS event_id,
    multiIf(k < 2, 'OrderCreated', k < 4, 'OrderValidated', k < 6, 'PaymentProcessed',
            k < 8, 'InventoryReserved', k = 8, 'OrderShipped', k = 9, 'OrderDelivered',
            k = 10, 'OrderCancelled', k < 17, 'ProductViewed', k = 17, 'AddedToCart',
            k = 18, 'CheckoutStarted', 'InventoryAdjusted') AS event,
    'atlantic.events.bench' AS subject,
    now64(3) - toIntervalMillisecond(intDiv(({n} - number) * {span_ms}, {n})) AS timestamp,
    if(k <= 10, 'o' || toString(number - multiIf(k < 2, 0, k < 4, 2, k < 6, 4, k < 8, 6,
                                                 k < 10, 8, 9)), '') AS order_id,
    if(k < 2 OR (k >= 11 AND k % 2 = 1), 'u' || toString(number * 7 % 100000), '') AS user_id,
    if(k >= 11 AND k % 2 = 0, 'a' || toString(number * 13 % 200000), '') AS anonymous_id,
    if(k >= 11, 'p' || toString(number % 2000), '') AS product_id,
    toDecimal64(if(k < 2 OR k = 4 OR k = 5, 10 + number % 90, 0), 2) AS amount,
    multiIf(k < 4 AND k >= 2, 'valid', k < 6 AND k >= 4, 'SUCCESS', '') AS status,
    if(k < 8 OR k = 17 OR k = 19, 1 + number % 3, 0) AS quantity,
    if(k = 19, toNullable(toInt64(100 + number % 400)), NULL) AS on_hand,
    if(k = 19, toNullable(toInt64(number % 400)), NULL) AS available,
    CAST(if(k < 2 OR (k >= 6 AND k < 8), [tuple('p' || toString(number % 2000), 1 + number % 3,
         toDecimal64(10 + number % 90, 2))], []),
         'Array(Tuple(product_id String, quantity Int64, price Decimal(18, 2)))') AS items,
    number AS stream_seq, timestamp AS published_at, '{{}}' AS raw
FROM (SELECT number, number % 20 AS k FROM numbers({n}))
"""


def midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


async def dashboard(data_dir: str, events: int, repeats: int) -> dict:
    store = AnalyticsStore.for_settings(None, data_dir, 400, reuse_seconds=0)
    await store.start()
    began = time.perf_counter()
    stored = int((await store._one("SELECT count() AS n FROM {db}.events"))["n"])
    if stored == 0:
        sql = LOAD.format(db=store.db, n=events, span_ms=DAYS * 86_400_000)
        await store._run(store.backend.query, sql, {})
    elif stored != events:
        raise SystemExit(f"{data_dir} holds {stored} events, not {events}: use another one")
    await _mutations_done(store)  # a projection added on start is built in the background
    # Merged parts, as a running system's background merges leave them (else the timed queries
    # race the merges for the two cores).
    for table in ("events", *(d.table for d in schema.DERIVED)):
        await store._run(store.backend.query, f"OPTIMIZE TABLE {store.db}.{table} FINAL", {})
    loaded = time.perf_counter() - began
    end = datetime.now(UTC) + timedelta(minutes=1)
    queries = {
        "summary": lambda s, e: store.summary(s, e),
        "timeseries (hourly revenue)": lambda s, e: store.sales_series(s, e, 3600, "revenue"),
        "timeseries (active users)": lambda s, e: store.active_users_series(s, e, 3600),
        # whole UTC days, as the handler asks for them (its buckets start at midnight)
        "timeseries (daily active users)": lambda s, e: store.active_users_series(
            midnight(s), midnight(e) + timedelta(days=1), 86_400),
        "top_products": lambda s, e: store.top_products(s, e, "revenue", 10),
        "funnel (orders)": lambda s, e: store.order_funnel(s, e),
        "funnel (shoppers)": lambda s, e: store.shopper_funnel(s, e),
        "inventory (stock)": lambda s, e: store.stock(s, e, 50),
        "inventory (low stock)": lambda s, e: store.low_stock(s, e, 10, 50),
        "users": lambda s, e: store.users(s, e),
    }
    results, cpu = {}, {}
    for window, days in (("24 h", 1), ("30 days", DAYS)):
        start = end - timedelta(days=days, minutes=1)
        for name, query in queries.items():
            await query(start, end)  # warm: the first read of a part loads its marks
            took, used = [], []
            for _ in range(repeats):
                t, c = time.perf_counter(), time.process_time()
                await query(start, end)
                took.append(time.perf_counter() - t)
                used.append(time.process_time() - c)
            results[f"{name}, {window}"] = (percentile(took, .5), percentile(took, .99))
            cpu[f"{name}, {window}"] = percentile(used, .5)
    await store.close()
    # The process's CPU per query (chDB's threads included), p50: on a machine shared with
    # other work, what a query costs apart from the waiting.
    return {"events": events, "load_seconds": loaded, "queries": results, "cpu_p50": cpu}


async def _mutations_done(store: AnalyticsStore, seconds: int = 3_600) -> None:
    for _ in range(seconds):
        if not int((await store._one("SELECT count() AS n FROM system.mutations WHERE"
                                     " database = {db:String} AND NOT is_done", db=store.db))["n"]):
            return
        await asyncio.sleep(1)
    raise SystemExit("the stored parts' mutations did not finish")


async def lag(data_dir: str, since: str, until: str | None = None) -> dict:
    store = AnalyticsStore.for_settings(None, data_dir, 400)
    end = datetime.fromisoformat(until) if until else datetime.now(UTC) + timedelta(days=1)
    row = await store._one(
        "SELECT count() AS n,"
        " quantileExact(0.5)(dateDiff('millisecond', timestamp, ingested_at)) AS p50,"
        " quantileExact(0.99)(dateDiff('millisecond', timestamp, ingested_at)) AS p99"
        " FROM {db}.events WHERE timestamp >= {since:DateTime64(3, 'UTC')}"
        " AND timestamp < {until:DateTime64(3, 'UTC')}",
        since=datetime.fromisoformat(since), until=end)
    await store.close()
    return {"events": int(row["n"]), "p50": float(row["p50"]) / 1e3,
            "p99": float(row["p99"]) / 1e3}


async def inserts(data_dir: str, orders: int, count: int, storage: str = "packed") -> dict:
    from contracts.events import InventoryReserved, OrderCreated, OrderValidated, PaymentProcessed
    from storage.analytics.rows import row

    store = AnalyticsStore.for_settings(None, data_dir, 400)
    await store.start()
    if storage == "full":
        for statement in schema.packed_statements(store.db, below_level=0):
            await store._rows(statement)
    made = 0

    def saga_events(n: int) -> list[dict]:
        nonlocal made
        rows, now = [], datetime.now(UTC)
        for _ in range(n):
            made += 1
            order, line = f"bench-{made}", {"productId": "p1", "quantity": 1, "price": "2.50"}
            for event in (OrderCreated(order_id=order, customer_id="c1", items=[line],
                                       total_price="2.50"),
                          OrderValidated(order_id=order, is_valid=True, validation_errors=[]),
                          PaymentProcessed(order_id=order, payment_id="p", amount="2.50",
                                           payment_status="SUCCESS"),
                          InventoryReserved(order_id=order, items=[line])):
                rows.append(row(event.model_dump_json().encode(), subject=event.subject,
                                stream_seq=made, published_at=now))
        return rows

    await store.insert_new_events(saga_events(5))  # warm
    files = _files(data_dir)
    dedupe = whole = 0.0
    for _ in range(count):
        batch = saga_events(orders)
        began = time.process_time()
        await store.stored_ids(batch)
        checked = time.process_time()
        await store.insert_new_events(batch)  # its own dedupe query, then the insert
        dedupe += checked - began
        whole += time.process_time() - checked
    files = _files(data_dir) - files
    await store.close()
    return {"storage": storage, "orders_per_insert": orders, "inserts": count,
            "cpu_ms_per_insert": whole / count * 1e3, "of_which_dedupe_ms": dedupe / count * 1e3,
            "files_left_per_insert": files / count}


def _files(data_dir: str) -> int:
    return sum(len(names) for _, _, names in os.walk(data_dir))


if __name__ == "__main__":
    kind, data_dir, *rest = sys.argv[1:]
    if kind == "dashboard":
        print(json.dumps(asyncio.run(dashboard(data_dir, int(rest[0]), int(rest[1])))))
    elif kind == "inserts":
        print(json.dumps(asyncio.run(inserts(data_dir, int(rest[0]), int(rest[1]), *rest[2:]))))
    else:
        print(json.dumps(asyncio.run(lag(data_dir, *rest))))
