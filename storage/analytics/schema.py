"""The analytics tables, created idempotently at start-up (ClickHouse has no migration tool
here, and every statement is IF NOT EXISTS). `{db}` is the database name from configuration,
checked to be an identifier; retention is an integer from settings."""

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
TTL toDateTime(timestamp) + toIntervalDay({retention_days})
"""

# Order lines exploded per product, filled by a materialized view on every insert of events.
ORDER_LINES = """
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
TTL toDateTime(timestamp) + toIntervalDay({retention_days})
"""

ORDER_LINES_VIEW = """
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.order_lines_mv TO {db}.order_lines AS
SELECT event_id, line, timestamp, order_id, user_id AS customer_id,
       item.product_id AS product_id, item.quantity AS quantity, item.price AS price,
       CAST(item.quantity * item.price AS Decimal(18, 2)) AS revenue
FROM {db}.events
ARRAY JOIN items AS item, arrayEnumerate(items) AS line
WHERE event = 'OrderCreated'
"""

# Sales per minute, pre-aggregated for the timeseries; hours and days are sums of minutes.
SALES_BY_MINUTE = """
CREATE TABLE IF NOT EXISTS {db}.sales_by_minute (
    minute DateTime('UTC'),
    orders UInt64,
    revenue Decimal(38, 2),
    units Int64
) ENGINE = SummingMergeTree
ORDER BY minute
TTL minute + toIntervalDay({retention_days})
"""

SALES_BY_MINUTE_VIEW = """
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.sales_by_minute_mv TO {db}.sales_by_minute AS
SELECT toDateTime(toStartOfMinute(timestamp), 'UTC') AS minute, count() AS orders,
       sum(amount) AS revenue, sum(quantity) AS units
FROM {db}.events
WHERE event = 'OrderCreated'
GROUP BY minute
"""

# The latest stock level per product and day, as argMax states: a level as of any moment is the
# merge of the whole days before it and the raw events of its own day. argMax is idempotent, so
# a level event counted twice (the backfill racing an insert) changes nothing.
LEVEL = "argMaxIf, Nullable(Int64), Tuple(DateTime64(3, 'UTC'), String), UInt8"
STOCK_LEVELS = f"""
CREATE TABLE IF NOT EXISTS {{db}}.stock_levels (
    product_id String,
    day Date,
    on_hand AggregateFunction({LEVEL}),
    available AggregateFunction({LEVEL})
) ENGINE = AggregatingMergeTree
ORDER BY (product_id, day)
TTL day + toIntervalDay({{retention_days}})
"""

STOCK_LEVELS_SELECT = """
SELECT product_id, toDate(timestamp) AS day,
       argMaxIfState(on_hand, (timestamp, event_id), on_hand IS NOT NULL) AS on_hand,
       argMaxIfState(available, (timestamp, event_id), available IS NOT NULL) AS available
FROM {db}.events WHERE event IN ('ProductCreated', 'InventoryAdjusted', 'InventoryLow')
GROUP BY product_id, day
"""

STOCK_LEVELS_VIEW = ("CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.stock_levels_mv"
                     " TO {db}.stock_levels AS" + STOCK_LEVELS_SELECT)

# Each customer's first order: a row per customer, kept past the events' retention so that
# "new customer" keeps meaning a first order ever. min is idempotent, like argMax above.
FIRST_ORDERS = """
CREATE TABLE IF NOT EXISTS {db}.first_orders (
    customer_id String,
    first SimpleAggregateFunction(min, DateTime64(3, 'UTC'))
) ENGINE = AggregatingMergeTree
ORDER BY customer_id
"""

FIRST_ORDERS_SELECT = """
SELECT user_id AS customer_id, min(timestamp) AS first
FROM {db}.events WHERE event = 'OrderCreated' GROUP BY customer_id
"""

FIRST_ORDERS_VIEW = ("CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.first_orders_mv"
                     " TO {db}.first_orders AS" + FIRST_ORDERS_SELECT)

# How far each order got: one row per order once merged (the funnel reads it with FINAL, which
# merges what is not merged yet). Steps may arrive before the order's OrderCreated, so `created`
# is the epoch until it does, and the TTL runs from the latest event instead.
ORDER_PROGRESS = """
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
TTL toDateTime(last_event) + toIntervalDay({retention_days})
"""

ORDER_PROGRESS_SELECT = """
SELECT order_id,
       max(if(event = 'OrderCreated', timestamp, toDateTime64(0, 3, 'UTC'))) AS created,
       max(timestamp) AS last_event,
       max(event = 'OrderValidated' AND status = 'valid') AS validated,
       max(event = 'PaymentProcessed' AND status = 'SUCCESS') AS paid,
       max(event = 'InventoryReserved') AS reserved,
       max(event = 'OrderShipped') AS shipped,
       max(event = 'OrderDelivered') AS delivered
FROM {db}.events WHERE event IN ('OrderCreated', 'OrderValidated', 'PaymentProcessed',
                                 'InventoryReserved', 'OrderShipped', 'OrderDelivered')
GROUP BY order_id
"""

ORDER_PROGRESS_VIEW = ("CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.order_progress_mv"
                       " TO {db}.order_progress AS" + ORDER_PROGRESS_SELECT)

# Tables added after events had rows, and how to fill them from what is already stored.
BACKFILLS = {"stock_levels": "INSERT INTO {db}.stock_levels" + STOCK_LEVELS_SELECT,
             "first_orders": "INSERT INTO {db}.first_orders" + FIRST_ORDERS_SELECT,
             "order_progress": "INSERT INTO {db}.order_progress" + ORDER_PROGRESS_SELECT}

TABLES_WITH_TTL = {"events": "toDateTime(timestamp)", "order_lines": "toDateTime(timestamp)",
                   "sales_by_minute": "minute", "stock_levels": "day",
                   "order_progress": "toDateTime(last_event)"}


def _filled(sql: str, db: str, retention: int) -> str:
    return sql.replace("{db}", db).replace("{retention_days}", str(retention))


def statements(db: str, retention_days: int) -> list[str]:
    if not db.isidentifier():
        raise ValueError(f"bad ClickHouse database name {db!r}")
    retention = int(retention_days)
    ddl = [f"CREATE DATABASE IF NOT EXISTS {db}"]
    ddl += [_filled(s, db, retention)
            for s in (EVENTS, ORDER_LINES, ORDER_LINES_VIEW, SALES_BY_MINUTE,
                      SALES_BY_MINUTE_VIEW, STOCK_LEVELS, STOCK_LEVELS_VIEW, FIRST_ORDERS,
                      FIRST_ORDERS_VIEW, ORDER_PROGRESS, ORDER_PROGRESS_VIEW)]
    # A changed retention applies to existing tables too; old parts are trimmed as they merge.
    ddl += [f"ALTER TABLE {db}.{table} MODIFY TTL {column} + toIntervalDay({retention})"
            " SETTINGS materialize_ttl_after_modify = 0"
            for table, column in TABLES_WITH_TTL.items()]
    return ddl


def backfill(db: str, table: str) -> str:
    return _filled(BACKFILLS[table], db, 0)
