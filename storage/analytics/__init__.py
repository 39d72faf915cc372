"""Analytics storage: the event tables in ClickHouse and every dashboard query over them.

One small interface, two backends (storage.analytics.backends) and the same SQL. Every value
travels as a bound `{name:Type}` parameter; the only text put into SQL is the database name
from configuration (checked to be an identifier) and fixed fragments chosen from enums.
The engine calls block, so they run in a thread pool of the backend's size.
"""

import asyncio
import functools
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from storage.analytics import schema
from storage.analytics.backends import Backend, ChdbBackend, ServerBackend
from storage.analytics.rows import ch_time

T = "DateTime64(3, 'UTC')"
WINDOW = f"timestamp >= {{start:{T}}} AND timestamp < {{end:{T}}}"
BUCKET = "intDiv(toUInt32(toDateTime(timestamp)), {step:UInt32}) * {step:UInt32}"  # epoch s

# Windows longer than RAW_UP_TO read pre-aggregated data by whole hours [h0, h1) (none when
# h0 >= h1), the rest of the window from the events. Shorter ones read only the events: a day's
# events cost about what the same figures cost from two places (measured at 10M events).
RAW_UP_TO = timedelta(hours=36)
# The parts: HOURS through the events' hourly_totals projection (its WHERE and buckets must be
# made of toStartOfHour(timestamp) for ClickHouse to use it), HOUR_ROWS in user_activity, EDGES
# the window's partial first and last hours.
HOUR = 3600
HOURS = (f"toStartOfHour(timestamp) >= {{h0:{T}}} AND toStartOfHour(timestamp) < {{h1:{T}}}")
HOUR_BUCKET = "intDiv(toUInt32(toStartOfHour(timestamp)), {step:UInt32}) * {step:UInt32}"
HOUR_ROWS = f"hour >= {{h0:{T}}} AND hour < {{h1:{T}}}"
EDGES = f"{WINDOW} AND NOT (timestamp >= {{h0:{T}}} AND timestamp < {{h1:{T}}})"

# Distinct people over windows up to this long are exact (a few days of events or of
# active_users stay within the dashboard's budget); longer ones merge user_activity's
# uniqCombined sketches, and the reply says so.
EXACT_UP_TO = timedelta(days=3)
APPROX = schema.APPROX

# Identical dashboard queries within this long are answered once (many viewers refresh the same
# dashboard); a query still running is shared, not asked again.
REUSE_SECONDS = 1.0
# Ends a query that reads the events and none of their projections: ClickHouse otherwise tries
# every projection against every query, ~1-3 ms of CPU a query with the two kept here.
RAW = " SETTINGS optimize_use_projections = 0"
# The hourly estimates of people kept at most (then forgotten at once): 400 days of hours.
HOURS_KEPT = 24 * 400


def whole_hours(start: datetime, end: datetime) -> dict[str, datetime]:
    """The window and its whole hours, as the parameters of HOURS, HOUR_ROWS and EDGES."""
    h0 = math.ceil(start.timestamp() / HOUR) * HOUR
    h1 = math.floor(end.timestamp() / HOUR) * HOUR
    return {"start": start, "end": end, "h0": datetime.fromtimestamp(h0, UTC),
            "h1": datetime.fromtimestamp(h1, UTC)}


def pre_aggregated(start: datetime, end: datetime) -> bool:
    return end - start > RAW_UP_TO


def _totals(events: str, start: datetime, end: datetime) -> str:
    """Count, amount and quantity of these events per event and status over the window:
    whole hours from the hourly_totals projection, the partial ones from the events."""
    select = ("SELECT event, status, count() AS n, sum(amount) AS amount,"
              f" sum(quantity) AS units FROM {{db}}.events WHERE event IN ({events}) AND ")
    if not pre_aggregated(start, end):
        return f"{select}{WINDOW} GROUP BY event, status"
    return (f"{select}{HOURS} GROUP BY event, status"
            f" UNION ALL {select}{EDGES} GROUP BY event, status")


def combined(function: str, combinator: str) -> str:
    """uniqExact, State -> uniqExactState; uniqCombined(12), If -> uniqCombinedIf(12)."""
    name, paren, parameters = function.partition("(")
    return f"{name}{combinator}{paren}{parameters}"


def coalesced(query: Any) -> Any:
    """A dashboard query whose identical calls share one answer while it runs and for
    REUSE_SECONDS after (callers must not change it). A failure is not kept."""

    @functools.wraps(query)
    async def shared(self: "AnalyticsStore", *args: Any) -> Any:
        key = (query.__name__, *args)
        now = time.monotonic()
        for old in [k for k, kept in self._recent.items() if kept.until <= now]:
            del self._recent[old]
        if (kept := self._recent.get(key)) is None:
            kept = _Kept(asyncio.ensure_future(query(self, *args)), self.reuse_seconds)
            if self.reuse_seconds > 0:
                self._recent[key] = kept
        try:
            # shielded: one caller giving up does not cancel the others' answer
            return await asyncio.shield(kept.answer)
        except Exception:
            if self._recent.get(key) is kept:
                del self._recent[key]
            raise

    return shared


class _Kept:
    """An answer being computed (kept until it comes) or computed (kept reuse_seconds more)."""

    def __init__(self, answer: asyncio.Future, reuse_seconds: float):
        self.answer, self.until = answer, math.inf
        answer.add_done_callback(
            lambda _: setattr(self, "until", time.monotonic() + reuse_seconds))


def _parse(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line, parse_float=Decimal) for line in data.splitlines() if line]


def _time(text: str | None) -> datetime | None:
    if not text or text.startswith("1970-01-01"):
        return None
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


class AnalyticsStore:
    def __init__(self, backend: Backend, retention_days: int,
                 reuse_seconds: float = REUSE_SECONDS):
        self.backend = backend
        self.reuse_seconds = reuse_seconds
        self._recent: dict[tuple, _Kept] = {}
        self._hours: dict[int, tuple[Decimal, list[str]]] = {}  # hour: estimate, its parts
        self.db = backend.database
        if not self.db.isidentifier():
            raise ValueError(f"bad ClickHouse database name {self.db!r}")
        self._retention_days = retention_days
        self._pool = ThreadPoolExecutor(backend.max_threads, thread_name_prefix="clickhouse")

    @classmethod
    def for_settings(cls, clickhouse_url: str | None, data_dir: str, retention_days: int,
                     reuse_seconds: float = REUSE_SECONDS) -> "AnalyticsStore":
        backend = (ServerBackend.connect(clickhouse_url) if clickhouse_url
                   else ChdbBackend(data_dir))
        return cls(backend, retention_days, reuse_seconds)

    async def start(self) -> None:
        self._hours.clear()  # a table made again may name its parts as the one it replaces did
        existing = {r["name"] for r in await self._rows(
            "SELECT name FROM system.tables WHERE database = {db:String}", db=self.db)}
        projections = {r["name"] for r in await self._rows(
            "SELECT name FROM system.projections WHERE database = {db:String}"
            " AND table = 'events'", db=self.db)}
        missing = schema.PROJECTIONS.keys() - projections
        for statement in schema.statements(self.db, self._retention_days):
            await self._run(self.backend.query, statement, {})
        plain = schema.projection_statements(self.db, missing, settings=False)
        for statement, without in zip(schema.projection_statements(self.db, missing), plain,
                                      strict=True):
            try:
                await self._run(self.backend.query, statement, {})
            except Exception:
                # A server without projection settings (ClickHouse before 25.12) gets the
                # projection with the table's granularity: a window then reads more of it.
                if without == statement:
                    raise
                await self._run(self.backend.query, without, {})
        if await self._rows("SELECT 1 FROM system.merge_tree_settings WHERE name = {n:String}",
                            n=schema.PACKED_BELOW_LEVEL):
            for statement in schema.packed_statements(self.db):
                await self._run(self.backend.query, statement, {})
        for derived in schema.DERIVED:
            if derived.table not in existing:  # a new table learns what the events already hold
                await self._rows(derived.fill())
        for name in missing if "events" in existing else ():
            # The stored parts get it in the background; until then they are read whole.
            await self._rows(f"ALTER TABLE {{db}}.events MATERIALIZE PROJECTION {name}")

    async def repair_derived(self, window_seconds: float) -> None:
        """Derives again what the events ingested last (within window_seconds of the newest)
        should have put in every derived table: after a crash inside an insert, the events may
        be stored while a view's rows are not. Counts nothing twice (see schema)."""
        row = await self._one("SELECT max(ingested_at) AS last FROM {db}.events")
        if (last := _time(row["last"])) is None:
            return
        since = last - timedelta(seconds=window_seconds)
        for derived in schema.DERIVED:
            await self._rows(derived.fill(f"{{since:{T}}}"), since=since)

    async def close(self) -> None:
        await self._run(self.backend.close)
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        params = {k: ch_time(v) if isinstance(v, datetime) else v for k, v in params.items()}
        return _parse(await self._run(self.backend.query, sql.replace("{db}", self.db), params))

    async def _one(self, sql: str, **params: Any) -> dict[str, Any]:
        return (await self._rows(sql, **params))[0]

    # --- ingest -------------------------------------------------------------------------

    async def stored_ids(self, rows: Sequence[Mapping[str, Any]]) -> set[str]:
        """Which of these events are already stored (a redelivery or a republished event).
        Duplicates share event and timestamp, so the primary key narrows the search."""
        if not rows:
            return set()
        found = await self._rows(
            f"SELECT DISTINCT event_id FROM {{db}}.events"
            f" WHERE event IN {{events:Array(String)}}"
            f" AND timestamp >= {{lo:{T}}} AND timestamp <= {{hi:{T}}}"
            f" AND event_id IN {{ids:Array(String)}}{RAW}",
            events=sorted({r["event"] for r in rows}),
            lo=min(r["timestamp"] for r in rows), hi=max(r["timestamp"] for r in rows),
            ids=[r["event_id"] for r in rows])
        return {r["event_id"] for r in found}

    async def insert_new_events(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Inserts the events not stored yet, once each; returns how many were new.
        One process inserts at a time per consumer, so check-then-insert is exact."""
        unique = list({r["event_id"]: r for r in rows}.values())
        stored = await self.stored_ids(unique)
        new = [r for r in unique if r["event_id"] not in stored]
        if new:
            body = "\n".join(json.dumps(r, separators=(",", ":")) for r in new).encode()
            await self._run(self.backend.insert, f"{self.db}.events", body)
        return len(new)

    async def ingest_lag(self) -> dict[str, Any]:
        row = await self._one(
            "SELECT max(ingested_at) AS last,"
            " maxIf(dateDiff('millisecond', published_at, ingested_at),"
            "       ingested_at >= now64(3) - INTERVAL 1 MINUTE) AS lag_ms,"
            " countIf(ingested_at >= now64(3) - INTERVAL 1 MINUTE) AS recent"
            " FROM {db}.events WHERE ingested_at >= now64(3) - INTERVAL 1 DAY" + RAW)
        lag = row["lag_ms"] / 1000 if int(row["recent"]) else None
        return {"last_ingested_at": _time(row["last"]), "lag_seconds": lag}

    # --- dashboard queries ----------------------------------------------------------------

    @coalesced
    async def summary(self, start: datetime, end: datetime) -> dict[str, Any]:
        return await self._one(
            # An order is created, cancelled and returned at most once (its state machine), and
            # each event is stored once (the ingest's dedupe), so counting events counts orders.
            "SELECT sumIf(n, event = 'OrderCreated') AS orders,"
            " sumIf(amount, event = 'OrderCreated') AS revenue,"
            " sumIf(units, event = 'OrderCreated') AS units,"
            " sumIf(n, event = 'OrderCancelled') AS cancelled,"
            " sumIf(n, event = 'OrderReturned') AS returned,"
            " sumIf(amount, event = 'PaymentProcessed' AND status = 'REFUNDED') AS refunds FROM ("
            + _totals("'OrderCreated', 'OrderCancelled', 'OrderReturned', 'PaymentProcessed'",
                      start, end)
            + ")" + ("" if pre_aggregated(start, end) else RAW), **whole_hours(start, end))

    async def _buckets(self, sql: str, **params: Any) -> dict[int, Decimal]:
        return {int(r["bucket"]): Decimal(r["value"]) for r in await self._rows(sql, **params)}

    @coalesced
    async def sales_series(self, start: datetime, end: datetime, step_seconds: int,
                           metric: str) -> dict[int, Decimal]:
        """Sales per bucket; bucket = epoch seconds. Buckets of whole hours sum the hourly
        totals, minutes (and any partial hour) read the events."""
        value = {"revenue": "sum(amount)", "orders": "count()", "units": "sum(quantity)"}[metric]
        if step_seconds % HOUR or not pre_aggregated(start, end):
            return await self._buckets(
                f"SELECT {BUCKET} AS bucket, {value} AS value FROM {{db}}.events"
                f" WHERE event = 'OrderCreated' AND {WINDOW} GROUP BY bucket{RAW}",
                start=start, end=end, step=step_seconds)
        return await self._buckets(
            "SELECT bucket, sum(value) AS value FROM ("
            f" SELECT {HOUR_BUCKET} AS bucket, {value} AS value FROM {{db}}.events"
            f"  WHERE event = 'OrderCreated' AND {HOURS} GROUP BY bucket"
            " UNION ALL"
            f" SELECT {BUCKET} AS bucket, {value} AS value FROM {{db}}.events"
            f"  WHERE event = 'OrderCreated' AND {EDGES} GROUP BY bucket"
            ") GROUP BY bucket", **whole_hours(start, end), step=step_seconds)

    @coalesced
    async def active_users_series(self, start: datetime, end: datetime,
                                  step_seconds: int) -> tuple[dict[int, Decimal], bool]:
        """Distinct signed-in people per bucket, and whether the figures are estimates.
        Exact up to EXACT_UP_TO: whole UTC days from active_users, other buckets from the
        events. Longer, buckets of whole hours merge user_activity's sketches of their hours
        with those of any partial hour's events."""
        if step_seconds == HOUR and end - start > EXACT_UP_TO:
            return await self._hourly_people(start, end), True
        if step_seconds % HOUR == 0 and end - start > EXACT_UP_TO:
            return await self._buckets(
                f"SELECT bucket, {combined(APPROX, 'Merge')}(s) AS value FROM ("
                f" SELECT intDiv(toUInt32(hour), {{step:UInt32}}) * {{step:UInt32}} AS bucket,"
                f"  users AS s FROM {{db}}.user_activity WHERE {HOUR_ROWS}"
                " UNION ALL"
                f" SELECT {BUCKET} AS bucket, {combined(APPROX, 'State')}(user_id) AS s"
                f"  FROM {{db}}.events WHERE {EDGES} AND user_id != '' GROUP BY bucket"
                f") GROUP BY bucket{RAW}", **whole_hours(start, end), step=step_seconds), True
        if step_seconds == 86_400 and start == start.replace(hour=0, minute=0, second=0,
                                                             microsecond=0):
            return await self._buckets(
                "SELECT toUInt32(toDateTime(day)) AS bucket, uniqExact(user_id) AS value"
                f" FROM {{db}}.active_users WHERE day >= toDate({{start:{T}}})"
                f" AND day < toDate({{end:{T}}}) GROUP BY day", start=start, end=end), False
        return await self._buckets(
            f"SELECT {BUCKET} AS bucket, uniqExact(user_id) AS value"
            f" FROM {{db}}.events WHERE {WINDOW} AND user_id != '' GROUP BY bucket{RAW}",
            start=start, end=end, step=step_seconds), False

    async def _hourly_people(self, start: datetime, end: datetime) -> dict[int, Decimal]:
        """Hourly estimates of the signed-in people: each whole hour's from its user_activity
        sketch, kept (self._hours) while the parts holding the hour's rows are the same ones
        (a part never changes: an insert, merge or mutation makes a new one); the partial
        first and last hours from the events."""
        hours = whole_hours(start, end)
        held = {int(r["hour"]): r["parts"] for r in await self._rows(
            "SELECT toUInt32(hour) AS hour, arraySort(groupUniqArray(_part)) AS parts"
            f" FROM {{db}}.user_activity WHERE {HOUR_ROWS} GROUP BY hour", **hours)}
        stale = [h for h, parts in held.items() if self._hours.get(h, (0, None))[1] != parts]
        if stale:
            # Read after the parts: a part added in between is read too, and the hour is read
            # again next time (its parts differ from those kept).
            fresh = await self._buckets(
                f"SELECT toUInt32(hour) AS bucket, {combined(APPROX, 'Merge')}(users) AS value"
                " FROM {db}.user_activity WHERE toUInt32(hour) IN {hours:Array(UInt32)}"
                " GROUP BY hour", hours=stale)
            if len(self._hours) > HOURS_KEPT:
                self._hours.clear()
            self._hours.update({h: (fresh.get(h, Decimal(0)), held[h]) for h in stale})
        edges = await self._buckets(
            f"SELECT {BUCKET} AS bucket, {APPROX}(user_id) AS value FROM {{db}}.events"
            f" WHERE {EDGES} AND user_id != '' GROUP BY bucket{RAW}", **hours, step=HOUR)
        return {h: self._hours[h][0] for h in held} | edges

    @coalesced
    async def top_products(self, start: datetime, end: datetime, by: str,
                           limit: int) -> list[dict[str, Any]]:
        order = {"revenue": "revenue DESC, units DESC",
                 "units": "units DESC, revenue DESC"}[by]
        return await self._rows(
            # An order names a product on one line only, so its lines count its orders.
            "SELECT product_id, sum(revenue) AS revenue, sum(quantity) AS units,"
            " count() AS orders"
            # FINAL: a crash can leave a view's rows without the events' (see ingest); the
            # redelivered events then write those lines again, and FINAL counts them once.
            f" FROM {{db}}.order_lines FINAL WHERE {WINDOW}"
            f" GROUP BY product_id ORDER BY {order}, product_id LIMIT {{limit:UInt32}}",
            start=start, end=end, limit=limit)

    @coalesced
    async def order_funnel(self, start: datetime, end: datetime) -> dict[str, int]:
        """Orders created in the window, and how many of them reached each later step."""
        row = await self._one(
            "SELECT count() AS created, countIf(v) AS validated, countIf(v AND p) AS paid,"
            " countIf(v AND p AND r) AS reserved, countIf(v AND p AND r AND s) AS shipped,"
            " countIf(v AND p AND r AND s AND d) AS delivered FROM ("
            "  SELECT validated AS v, paid AS p, reserved AS r, shipped AS s, delivered AS d"
            "  FROM {db}.order_progress FINAL"
            f"  WHERE created >= {{start:{T}}} AND created < {{end:{T}}})", start=start, end=end)
        return {k: int(v) for k, v in row.items()}

    @coalesced
    async def shopper_funnel(self, start: datetime, end: datetime) -> dict[str, int]:
        """People (signed in or anonymous) active in the window, by how far they went: from
        each shopper's latest moment at every step when no shopper was active at or after
        `end` (a window ending now), else from the window's events."""
        row = await self._one(
            "SELECT countIf(v) AS viewed, countIf(v AND a) AS added_to_cart,"
            " countIf(v AND a AND c) AS checkout, countIf(v AND a AND c AND o) AS purchased,"
            " countIf(late) AS late FROM ("
            f"  SELECT viewed >= {{since:{T}}} AS v, added >= {{since:{T}}} AS a,"
            f"   checkout >= {{since:{T}}} AS c, ordered >= {{since:{T}}} AS o,"
            f"   greatest(viewed, added, checkout, ordered) >= {{end:{T}}} AS late"
            "  FROM {db}.shoppers FINAL)",
            # the epoch stands for a step never taken
            since=max(start, datetime.fromtimestamp(0.001, UTC)), end=end)
        if int(row.pop("late")):
            row = await self._one(
                "SELECT countIf(v) AS viewed, countIf(v AND a) AS added_to_cart,"
                " countIf(v AND a AND c) AS checkout, countIf(v AND a AND c AND o) AS purchased"
                " FROM ("
                "  SELECT if(user_id != '', user_id, anonymous_id) AS actor,"
                "   max(event = 'ProductViewed') AS v, max(event = 'AddedToCart') AS a,"
                "   max(event = 'CheckoutStarted') AS c, max(event = 'OrderCreated') AS o"
                f"  FROM {{db}}.events WHERE {WINDOW} AND event IN"
                "   ('ProductViewed', 'AddedToCart', 'CheckoutStarted', 'OrderCreated')"
                f"  GROUP BY actor HAVING actor != ''){RAW}", start=start, end=end)
        return {k: int(v) for k, v in row.items()}

    # Per product: the level as of `end` and the movement within the window. The level is the
    # latest ever when no product has reported one since `end` (a window ending now), else the
    # merge of stock_levels' days before the day of `end` with the raw level events of that day.
    # The movement of whole UTC days comes from the events' daily_moves maps, the rest of the
    # window (all of a window shorter than a day) from the events. Each part is grouped by
    # product on its own, so the final merge sees a few rows per product.
    _NO_LEVEL = ("argMaxIfState(CAST(NULL AS Nullable(Int64)),"
                 " (toDateTime64(0, 3, 'UTC'), ''), toUInt8(0))")
    _LATEST_LEVELS = "SELECT product_id, on_hand, available FROM {db}.stock_latest"
    _LEVELS_AT_END = (
        f"SELECT product_id, on_hand, available FROM {{db}}.stock_levels"
        f" WHERE day < toDate({{end:{T}}})"
        " UNION ALL"  # the levels reported on the day of `end`, up to `end`
        " SELECT product_id,"
        f"  {schema.LEVEL_STATES[0]},"
        f"  {schema.LEVEL_STATES[1]}"
        f" FROM {{db}}.events WHERE {schema.LEVEL_EVENTS}"
        f"  AND timestamp >= toStartOfDay({{end:{T}}}) AND timestamp < {{end:{T}}}"
        " GROUP BY product_id")
    _DAYS = f"toStartOfDay(timestamp) >= {{d0:{T}}} AND toStartOfDay(timestamp) < {{d1:{T}}}"
    _NOT_DAYS = f"{WINDOW} AND NOT (timestamp >= {{d0:{T}}} AND timestamp < {{d1:{T}}})"
    _DAY_MOVES = (
        f"  SELECT product_id, {_NO_LEVEL}, {_NO_LEVEL},"
        "   sumIf(units, event = 'InventoryAdjusted'), sumIf(out, event = 'InventoryAdjusted'),"
        "   sumIf(units, event = 'InventoryReserved') FROM ("
        f"   SELECT event, {schema.MOVES} AS m FROM {{db}}.events"
        f"   WHERE event IN ('InventoryAdjusted', 'InventoryReserved') AND {_DAYS}"
        "   GROUP BY event) ARRAY JOIN m.1 AS product_id, m.2 AS units, m.3 AS out"
        "  GROUP BY product_id"
        "  UNION ALL")
    _EVENT_MOVES = (  # counts taken and removed, then units reserved for orders
        f"  SELECT product_id, {_NO_LEVEL}, {_NO_LEVEL},"
        "   sum(if(quantity > 0, quantity, 0)), sum(if(quantity < 0, -quantity, 0)), 0"
        f"  FROM {{db}}.events WHERE event = 'InventoryAdjusted' AND {_NOT_DAYS}"
        "  GROUP BY product_id"
        "  UNION ALL"
        f"  SELECT line_product, {_NO_LEVEL}, {_NO_LEVEL}, 0, 0, sum(line_units)"
        "  FROM {db}.events ARRAY JOIN items.product_id AS line_product,"
        "   items.quantity AS line_units"  # the lines' two columns, not their prices
        f"  WHERE event = 'InventoryReserved' AND {_NOT_DAYS}"
        "  GROUP BY line_product")

    async def _stock(self, start: datetime, end: datetime, tail: str,
                     **params: Any) -> list[dict[str, Any]]:
        late = await self._one(f"SELECT max(reported) >= {{end:{T}}} AS late"
                               " FROM {db}.stock_latest", end=end)
        d0 = datetime.fromtimestamp(math.ceil(start.timestamp() / 86_400) * 86_400, UTC)
        d1 = datetime.fromtimestamp(math.floor(end.timestamp() / 86_400) * 86_400, UTC)
        sql = (
            "SELECT product_id, argMaxIfMerge(on_hand) AS on_hand,"
            " argMaxIfMerge(available) AS available, sum(units_in) AS units_in,"
            " sum(units_out) AS units_out, sum(units_reserved) AS units_reserved FROM ("
            "  SELECT product_id, on_hand, available, toInt64(0) AS units_in,"
            "   toInt64(0) AS units_out, toInt64(0) AS units_reserved FROM ("
            + (self._LEVELS_AT_END if int(late["late"]) else self._LATEST_LEVELS) + ")"
            "  UNION ALL"
            + (self._DAY_MOVES if d0 < d1 else "") + self._EVENT_MOVES
            + " ) GROUP BY product_id " + tail + ("" if d0 < d1 else RAW))
        return await self._rows(sql, start=start, end=end, d0=d0, d1=max(d0, d1), **params)

    @coalesced
    async def stock(self, start: datetime, end: datetime, limit: int) -> list[dict[str, Any]]:
        """Per product: the latest level reported before `end`, and movement in the window."""
        return await self._stock(start, end, "ORDER BY product_id LIMIT {limit:UInt32}",
                                 limit=limit)

    @coalesced
    async def low_stock(self, start: datetime, end: datetime, threshold: int,
                        limit: int) -> list[dict[str, Any]]:
        return await self._stock(
            start, end, "HAVING available <= {threshold:Int64}"
            " ORDER BY available, product_id LIMIT {limit:UInt32}",
            threshold=threshold, limit=limit)

    @coalesced
    async def low_stock_alerts(self, start: datetime, end: datetime) -> int:
        row = await self._one(
            "SELECT count() AS n FROM {db}.events"
            f" WHERE event = 'InventoryLow' AND {WINDOW}{RAW}",
            start=start, end=end)
        return int(row["n"])

    # The signed-in people active in the window, with whether they ordered and registered there:
    # whole days from active_users, the partial first and last days from the events.
    _WHOLE_DAYS = (f"day >= toDate({{start:{T}}}) + (toStartOfDay({{start:{T}}}) != {{start:{T}}})"
                   f" AND day < toDate({{end:{T}}})")
    _WINDOW_USERS = (
        "SELECT user_id, ordered, registered FROM {db}.active_users"
        f" WHERE {_WHOLE_DAYS}"
        " UNION ALL"
        " SELECT user_id, event = 'OrderCreated', event = 'UserRegistered' FROM ("
        f"  SELECT user_id, event, toDate(timestamp) AS day FROM {{db}}.events"
        f"  WHERE {WINDOW} AND user_id != '') WHERE NOT ({_WHOLE_DAYS})")

    async def _people(self, start: datetime, end: datetime) -> dict[str, Any]:
        """Signed-in people active in the window, those of them who ordered, and those who
        registered: exact up to EXACT_UP_TO (from the same rows), else the first two from
        user_activity's sketches of its whole hours merged with those of its partial hours'
        events, and the registrations counted from their own events."""
        if end - start <= EXACT_UP_TO:
            return await self._one(
                "SELECT uniqExact(user_id) AS active_users,"
                " uniqExactIf(user_id, ordered) AS customers,"
                " uniqExactIf(user_id, registered) AS new_registrations"
                f" FROM ({self._WINDOW_USERS}){RAW}", start=start, end=end)
        return await self._one(
            f"SELECT {combined(APPROX, 'Merge')}(u) AS active_users,"
            f" {combined(APPROX, 'IfMerge')}(c) AS customers,"
            " (SELECT uniqExact(user_id) FROM {db}.events"
            f"  WHERE event = 'UserRegistered' AND {WINDOW}) AS new_registrations FROM ("
            " SELECT users AS u, customers AS c FROM {db}.user_activity"
            f"  WHERE {HOUR_ROWS}"
            " UNION ALL"
            f" SELECT {combined(APPROX, 'State')}(user_id),"
            f"  {combined(APPROX, 'IfState')}(user_id, event = 'OrderCreated')"
            f"  FROM {{db}}.events WHERE {EDGES} AND user_id != ''){RAW}",
            **whole_hours(start, end))

    @coalesced
    async def users(self, start: datetime, end: datetime) -> dict[str, Any]:
        """Active people and customers (estimates over windows longer than EXACT_UP_TO),
        registrations, and customers whose first order ever is in the window."""
        people = await self._people(start, end)
        firsts = await self._one(
            # A customer is new when their first order ever is in the window (FINAL: the
            # filter sees each customer's merged first order).
            "SELECT count() AS new_customers FROM {db}.first_orders FINAL"
            f" WHERE first >= {{start:{T}}} AND first < {{end:{T}}}", start=start, end=end)
        figures = {k: int(v) for k, v in (people | firsts).items()}
        # An estimate of the customers may fall below the exact count of new ones.
        figures["returning_customers"] = max(figures["customers"] - figures["new_customers"], 0)
        return figures | {"approximate": end - start > EXACT_UP_TO}
