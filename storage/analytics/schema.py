"""The analytics tables, created idempotently at start-up (ClickHouse has no migration tool
here, and every statement can run again: IF NOT EXISTS, IF EXISTS). `{db}` is the database name
from configuration, checked to be an identifier; retention is an integer from settings.

Besides the raw events, every table is derived from them by a materialized view, and every one
can be derived again without counting anything twice: the aggregates are argMax, min and max
(idempotent), and order lines are keyed by event and line and read with FINAL (a repair adds
them only for events that have none). That is what lets a new table be filled from stored
events, and the ingest survive a crash inside an insert that wrote only some of the tables.
"""

from dataclasses import dataclass

# Raw events: one row per eventId. ReplacingMergeTree folds any duplicate a crash let through
# (same key: a duplicate has the same event, timestamp and id); insert-time dedup keeps counts
# exact before any merge.
EVENTS = """
CREATE TABLE IF NOT EXISTS {db}.events (
    event_id String,
    event LowCardinality(String),
    subject LowCardinality(String),
    timestamp DateTime64(3, 'UTC'),
    order_id String,
    user_id String,
    anonymous_id String,
    product_id String,
    amount Decimal(18, 2),
    status LowCardinality(String),
    quantity Int64,
    on_hand Nullable(Int64),
    available Nullable(Int64),
    threshold Nullable(Int64),
    items Array(Tuple(product_id String, quantity Int64, price Decimal(18, 2))),
    stream_seq UInt64,
    published_at DateTime64(3, 'UTC'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    raw String CODEC(ZSTD(3)),
    INDEX event_id_idx event_id TYPE bloom_filter GRANULARITY 1
) ENGINE = ReplacingMergeTree
ORDER BY (event, timestamp, event_id)
"""


@dataclass(frozen=True)
class Derived:
    table: str
    create: str
    select: str  # over `{events}`: the events table in the view, a subset to fill or repair
    fill_only: str = ""  # filling from stored events: only those matching this (else: all)
    ttl: str = ""  # the column expression the retention counts from (none: kept for good)

    def view(self) -> str:
        return (f"CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.{self.table}_mv"
                f" TO {{db}}.{self.table} AS" + self.select.replace("{events}", "{db}.events"))

    def fill(self, since: str | None = None) -> str:
        """INSERT ... SELECT over the stored events (those ingested since `since`, a bound
        parameter's SQL, when given)."""
        where = [w for w in (f"ingested_at >= {since}" if since else "", self.fill_only) if w]
        source = ("(SELECT * FROM {db}.events WHERE " + " AND ".join(where) + ")" if where
                  else "{db}.events")
        return f"INSERT INTO {{db}}.{self.table}" + self.select.replace("{events}", source)


# Order lines exploded per product, for the product figures; added only for events without any.
ORDER_LINES = Derived("order_lines", """
CREATE TABLE IF NOT EXISTS {db}.order_lines (
    event_id String,
    line UInt32,
    timestamp DateTime64(3, 'UTC'),
    order_id String,
    customer_id String,
    product_id String,
    quantity Int64,
    price Decimal(18, 2),
    revenue Decimal(18, 2)
) ENGINE = ReplacingMergeTree
ORDER BY (timestamp, product_id, event_id, line)
""", """
SELECT event_id, line, timestamp, order_id, user_id AS customer_id,
       item.product_id AS product_id, item.quantity AS quantity, item.price AS price,
       CAST(item.quantity * item.price AS Decimal(18, 2)) AS revenue
FROM {events}
ARRAY JOIN items AS item, arrayEnumerate(items) AS line
WHERE event = 'OrderCreated'
""", fill_only="event_id NOT IN (SELECT event_id FROM {db}.order_lines)",
    ttl="toDateTime(timestamp)")

# The latest stock level per product and day, as argMax states: a level as of any moment is the
# merge of the whole days before it and the raw events of its own day.
LEVEL = "argMaxIf, Nullable(Int64), Tuple(DateTime64(3, 'UTC'), String), UInt8"
# The events that report a level, and the states of the levels they report.
LEVEL_EVENTS = "event IN ('ProductCreated', 'InventoryAdjusted', 'InventoryLow')"
LEVEL_STATES = ("argMaxIfState(on_hand, (timestamp, event_id), on_hand IS NOT NULL)",
                "argMaxIfState(available, (timestamp, event_id), available IS NOT NULL)")
STOCK_LEVELS = Derived("stock_levels", f"""
CREATE TABLE IF NOT EXISTS {{db}}.stock_levels (
    product_id String,
    day Date,
    on_hand AggregateFunction({LEVEL}),
    available AggregateFunction({LEVEL})
) ENGINE = AggregatingMergeTree
ORDER BY (product_id, day)
""", f"""
SELECT product_id, toDate(timestamp) AS day,
       {LEVEL_STATES[0]} AS on_hand,
       {LEVEL_STATES[1]} AS available
FROM {{events}} WHERE {LEVEL_EVENTS}
GROUP BY product_id, day
""", ttl="day")

# Each customer's first order: a row per customer, kept past the events' retention so that
# "new customer" keeps meaning a first order ever.
FIRST_ORDERS = Derived("first_orders", """
CREATE TABLE IF NOT EXISTS {db}.first_orders (
    customer_id String,
    first SimpleAggregateFunction(min, DateTime64(3, 'UTC'))
) ENGINE = AggregatingMergeTree
ORDER BY customer_id
""", """
SELECT user_id AS customer_id, min(timestamp) AS first
FROM {events} WHERE event = 'OrderCreated' GROUP BY customer_id
""")

# How far each order got: one row per order once merged (the funnel reads it with FINAL, which
# merges what is not merged yet). Steps may arrive before the order's OrderCreated, so `created`
# is the epoch until it does, and the TTL runs from the latest event instead.
ORDER_PROGRESS = Derived("order_progress", """
CREATE TABLE IF NOT EXISTS {db}.order_progress (
    order_id String,
    created SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    last_event SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    validated SimpleAggregateFunction(max, Bool),
    paid SimpleAggregateFunction(max, Bool),
    reserved SimpleAggregateFunction(max, Bool),
    shipped SimpleAggregateFunction(max, Bool),
    delivered SimpleAggregateFunction(max, Bool)
) ENGINE = AggregatingMergeTree
ORDER BY order_id
""", """
SELECT order_id,
       max(if(event = 'OrderCreated', timestamp, toDateTime64(0, 3, 'UTC'))) AS created,
       max(timestamp) AS last_event,
       max(event = 'OrderValidated' AND status = 'valid') AS validated,
       max(event = 'PaymentProcessed' AND status = 'SUCCESS') AS paid,
       max(event = 'InventoryReserved') AS reserved,
       max(event = 'OrderShipped') AS shipped,
       max(event = 'OrderDelivered') AS delivered
FROM {events} WHERE event IN ('OrderCreated', 'OrderValidated', 'PaymentProcessed',
                              'InventoryReserved', 'OrderShipped', 'OrderDelivered')
GROUP BY order_id
""", ttl="toDateTime(last_event)")

# Who was active each day, and whether they ordered or registered that day: the users figures
# over whole days read this, and only the window's partial first and last days read events.
ACTIVE_USERS = Derived("active_users", """
CREATE TABLE IF NOT EXISTS {db}.active_users (
    day Date,
    user_id String,
    ordered SimpleAggregateFunction(max, Bool),
    registered SimpleAggregateFunction(max, Bool)
) ENGINE = AggregatingMergeTree
ORDER BY (day, user_id)
""", """
SELECT toDate(timestamp) AS day, user_id, max(event = 'OrderCreated') AS ordered,
       max(event = 'UserRegistered') AS registered
FROM {events} WHERE user_id != '' GROUP BY day, user_id
""", ttl="day")

# Distinct signed-in people per hour, and those of them who ordered, as uniqCombined sketches
# (a standard error of about 1.6% at precision 12, twice as fast to merge as 14), merged at read
# time: windows too long for exact sets within the dashboard's budget (a month of hourly exact
# sets took ~450 ms to merge at 10M events) read their whole hours here and only their partial
# first and last hours from the events. Merging a sketch with itself changes nothing, so the
# table can be derived again like the others.
APPROX = "uniqCombined(12)"
USER_ACTIVITY = Derived("user_activity", f"""
CREATE TABLE IF NOT EXISTS {{db}}.user_activity (
    hour DateTime('UTC'),
    users AggregateFunction({APPROX}, String),
    customers AggregateFunction({APPROX.replace("(", "If(")}, String, UInt8)
) ENGINE = AggregatingMergeTree
ORDER BY hour
""", f"""
SELECT toStartOfHour(timestamp) AS hour, {APPROX.replace("(", "State(")}(user_id) AS users,
       {APPROX.replace("(", "IfState(")}(user_id, event = 'OrderCreated') AS customers
FROM {{events}} WHERE user_id != '' GROUP BY hour
""", ttl="hour")

# Each shopper's (signed in or anonymous) latest moment at every step of the shopper funnel: a
# row per shopper once merged (the funnel reads it with FINAL), the epoch for a step never taken.
# A window that ends after a shopper's every latest moment took the step iff the latest is in
# it, so a window ending now reads one row per shopper, not the window's events (a month of them
# grouped by shopper took ~380 ms of CPU at 10M events); a window some shopper was active after
# is counted from the events, as before. max is idempotent, so the table can be derived again.
SHOPPERS = Derived("shoppers", """
CREATE TABLE IF NOT EXISTS {db}.shoppers (
    shopper String,
    viewed SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    added SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    checkout SimpleAggregateFunction(max, DateTime64(3, 'UTC')),
    ordered SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
) ENGINE = AggregatingMergeTree
ORDER BY shopper
""", """
SELECT if(user_id != '', user_id, anonymous_id) AS shopper,
       maxIf(timestamp, event = 'ProductViewed') AS viewed,
       maxIf(timestamp, event = 'AddedToCart') AS added,
       maxIf(timestamp, event = 'CheckoutStarted') AS checkout,
       maxIf(timestamp, event = 'OrderCreated') AS ordered
FROM {events} WHERE event IN ('ProductViewed', 'AddedToCart', 'CheckoutStarted', 'OrderCreated')
    AND (user_id != '' OR anonymous_id != '')
GROUP BY shopper
""", ttl="toDateTime(greatest(viewed, added, checkout, ordered))")

# Every product's latest stock level ever, and when it was reported: a row per product once
# merged. A window ending after every product's latest report (one ending now) takes its levels
# here instead of merging stock_levels' days with the events of the window's last day. argMax
# and max are idempotent, as above. Like stock_levels it gets rows only from batches holding
# level events, so most inserts write no part of it.
STOCK_LATEST = Derived("stock_latest", f"""
CREATE TABLE IF NOT EXISTS {{db}}.stock_latest (
    product_id String,
    on_hand AggregateFunction({LEVEL}),
    available AggregateFunction({LEVEL}),
    reported SimpleAggregateFunction(max, DateTime64(3, 'UTC'))
) ENGINE = AggregatingMergeTree
ORDER BY product_id
""", f"""
SELECT product_id,
       {LEVEL_STATES[0]} AS on_hand,
       {LEVEL_STATES[1]} AS available,
       max(timestamp) AS reported
FROM {{events}} WHERE {LEVEL_EVENTS}
GROUP BY product_id
""", ttl="toDateTime(reported)")

DERIVED = (ORDER_LINES, STOCK_LEVELS, FIRST_ORDERS, ORDER_PROGRESS, ACTIVE_USERS,
           USER_ACTIVITY, SHOPPERS, STOCK_LATEST)

# Sales per minute were summed (not idempotent, so not repairable); the timeseries now reads
# the events, which is fast enough (~12 ms for 30 days of 10M events).
RETIRED = ["DROP VIEW IF EXISTS {db}.sales_by_minute_mv",
           "DROP TABLE IF EXISTS {db}.sales_by_minute"]

# Totals per event, status and hour, kept inside every part of the events table (a projection)
# rather than in a derived table: a sum is not idempotent, so a derived table of sums could not
# be derived again (see above), while a projection is written in the same part as its events
# (no crash stores one without the other) and is rebuilt when a merge folds a duplicate. The
# queries read whole hours through it and their partial first and last hours from the events.
HOURLY_TOTALS = "hourly_totals"
# Stock movement per event and UTC day, per product: a projection cannot unnest an order's
# lines, so each day holds one map from product to units (sumMap: per reservation line the units
# reserved; per adjustment the units taken in and out). sumMap merges slowly (~0.3 ms a day's
# map of 150 products), so the maps are by day (a month is ~60 of them), the window's partial
# days read from the events, and the granules are small (a window reads its days' maps, not a
# whole part's).
DAILY_MOVES = "daily_moves"
MOVES = ("sumMap(multiIf(event = 'InventoryReserved', tupleElement(items, 'product_id'),"
         " event = 'InventoryAdjusted', [product_id], []),"
         " multiIf(event = 'InventoryReserved', tupleElement(items, 'quantity'),"
         " event = 'InventoryAdjusted', [greatest(quantity, 0)], []),"
         " multiIf(event = 'InventoryReserved', arrayWithConstant(length(items), toInt64(0)),"
         " event = 'InventoryAdjusted', [greatest(-quantity, 0)], []))")
PROJECTIONS = {HOURLY_TOTALS: """
SELECT event, status, toStartOfHour(timestamp), count(), sum(amount), sum(quantity)
GROUP BY event, status, toStartOfHour(timestamp)""", DAILY_MOVES: f"""
SELECT event, toStartOfDay(timestamp), {MOVES}
GROUP BY event, toStartOfDay(timestamp)"""}
PROJECTION_SETTINGS = {DAILY_MOVES: "index_granularity = 16"}

# Retention, set by the ALTER that every start runs (so a new table gets it too).
TABLES_WITH_TTL = {"events": "toDateTime(timestamp)"} | {d.table: d.ttl for d in DERIVED if d.ttl}


def filled(sql: str, db: str, retention_days: int = 0) -> str:
    if not db.isidentifier():
        raise ValueError(f"bad ClickHouse database name {db!r}")
    return sql.replace("{db}", db).replace("{retention_days}", str(int(retention_days)))


def statements(db: str, retention_days: int) -> list[str]:
    ddl = ["CREATE DATABASE IF NOT EXISTS {db}", EVENTS, *RETIRED]
    for derived in DERIVED:
        ddl += [derived.create, derived.view()]
    # The retention, also when changed; existing parts are trimmed as they merge.
    ddl += [f"ALTER TABLE {{db}}.{table} MODIFY TTL {column} + toIntervalDay({{retention_days}})"
            " SETTINGS materialize_ttl_after_modify = 0"
            for table, column in TABLES_WITH_TTL.items()]
    return [filled(s, db, retention_days) for s in ddl]


# A fresh part as one archive (ClickHouse's packed part storage) instead of a dozen files: an
# insert writes a part to the events table and to every derived one, each then merged away
# within minutes, and on this machine kind creating and deleting files is what an insert costs
# most (an insert of 160 events: 101 new files and 57-64 ms of CPU, packed 17 files and 38-43 ms,
# while other processes churned files; BENCHMARKS.md, 2026-12-07). Merged parts (level 2 and up)
# are stored in full as before. Only where the engine knows the setting (a server older than
# ClickHouse 26 does not).
PACKED_BELOW_LEVEL = "min_level_for_full_part_storage"


def packed_statements(db: str, below_level: int = 2) -> list[str]:
    """Every table's parts below `below_level` packed (0: none, every part stored in full)."""
    tables = ["events", *(d.table for d in DERIVED)]
    return [filled(f"ALTER TABLE {{db}}.{table} MODIFY SETTING {PACKED_BELOW_LEVEL} ="
                   f" {int(below_level)}", db)
            for table in tables]


def projection_statements(db: str, missing: set[str], *, settings: bool = True) -> list[str]:
    """Adds the events' projections that are missing (each ALTER rewrites the table's metadata,
    so a start that finds them all runs none); `settings=False`: without their own settings,
    for a server that has none for a projection."""
    if not missing:
        return []
    # A merge that folds a duplicate event rebuilds the projections of its part.
    ddl = ["ALTER TABLE {db}.events MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild'"]
    ddl += [f"ALTER TABLE {{db}}.events ADD PROJECTION IF NOT EXISTS {name} ({PROJECTIONS[name]})"
            + (f" WITH SETTINGS ({PROJECTION_SETTINGS[name]})"
               if settings and name in PROJECTION_SETTINGS else "")
            for name in sorted(missing)]
    return [filled(s, db) for s in ddl]
