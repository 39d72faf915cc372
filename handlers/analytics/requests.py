"""What clients ask of the analytics set: `track` for shoppers' behaviour, and the figures
administrators query."""

import hashlib
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from contracts.analytics import (
    FUNNEL,
    INVENTORY,
    SUMMARY,
    TIMESERIES,
    TOP_PRODUCTS,
    TRACK,
    USERS,
    AddedToCart,
    BehaviorEvent,
    CheckoutStarted,
    Funnel,
    FunnelReply,
    IngestStatus,
    InventoryQuery,
    InventoryReply,
    Metric,
    Point,
    ProductViewed,
    RemovedFromCart,
    Searched,
    StockFigures,
    Summary,
    SummaryReply,
    Timeseries,
    TimeseriesReply,
    TopProducts,
    TopProductsReply,
    Track,
    Tracked,
    TrackedEvent,
    Users,
    UsersReply,
)
from contracts.errors import BadRequest, Unavailable
from handlers.analytics import IngestLoop, JetStream, PublishRetrySeconds, Store, analytics
from handlers.analytics.ingest import Ingest
from handlers.deps import Admin, OptionalUser
from handlers.jetstream import publish_until
from storage.analytics import AnalyticsStore

CENT = Decimal("0.01")
RATE = Decimal("0.0001")


def ratio(part: Decimal | int, whole: Decimal | int, unit: Decimal = RATE) -> Decimal:
    """part / whole, rounded half-even to `unit`; 0 when there is no whole."""
    return (Decimal(part) / Decimal(whole)).quantize(unit, ROUND_HALF_EVEN) if whole else Decimal(0)


# --- track --------------------------------------------------------------------------------

BEHAVIOR = {"product_viewed": ProductViewed, "added_to_cart": AddedToCart,
            "removed_from_cart": RemovedFromCart, "search": Searched,
            "checkout_started": CheckoutStarted}


def behavior_event(tracked: TrackedEvent, actor: dict[str, str | None]) -> BehaviorEvent:
    fields = tracked.model_dump(by_alias=False, exclude={"type", "client_event_id"})
    event = BEHAVIOR[tracked.type](**fields, **actor)
    if tracked.client_event_id:
        # A retried call publishes the same eventId, which JetStream and ingest both drop.
        # Derived per actor, so nobody can suppress someone else's events by guessing ids.
        key = f"{actor['user_id'] or ''}|{actor['anonymous_id'] or ''}|{tracked.client_event_id}"
        event.event_id = hashlib.sha256(key.encode()).hexdigest()[:32]
    return event


@analytics.request(TRACK)
async def track(req: Track, session: OptionalUser, js: JetStream,
                retry_seconds: PublishRetrySeconds) -> Tracked:
    """Records what a shopper did (views, cart changes, searches, checkouts), up to 100 at once."""
    if session is None and req.anonymous_id is None:
        raise BadRequest("send anonymousId, or sign in", code="anonymous_id_required")
    actor = {"user_id": session.user_id if session else None, "anonymous_id": req.anonymous_id}
    events = [behavior_event(tracked, actor) for tracked in req.events]
    try:
        for event in events:  # in order, each through a leader election within the deadline
            await publish_until(js, event.subject, event.model_dump_json().encode(),
                                event.event_id, within=retry_seconds)
    except Exception as exc:
        raise Unavailable("the event stream is unavailable; retry with the same ids") from exc
    return Tracked(accepted=len(events), event_ids=[e.event_id for e in events])


# --- queries (administrators) ---------------------------------------------------------------

async def ingest_status(store: AnalyticsStore, ingest: Ingest) -> IngestStatus:
    lag = await store.ingest_lag()
    return IngestStatus(pending=await ingest.pending(), **lag)


@analytics.request(SUMMARY)
async def summary(req: Summary, admin: Admin, store: Store, ingest: IngestLoop) -> SummaryReply:
    """Orders, revenue, average order value, units, cancellations, returns and refunds."""
    f = await store.summary(req.start, req.end)
    revenue, refunds = Decimal(f["revenue"]), Decimal(f["refunds"])
    return SummaryReply(
        from_=req.start, to=req.end, orders=f["orders"], revenue=revenue,
        average_order_value=ratio(revenue, f["orders"], CENT), units=f["units"],
        cancelled=f["cancelled"], returned=f["returned"], refunds=refunds,
        net_revenue=revenue - refunds, cancel_rate=ratio(f["cancelled"], f["orders"]),
        return_rate=ratio(f["returned"], f["orders"]), ingest=await ingest_status(store, ingest))


def bucket_starts(req: Timeseries) -> list[datetime]:
    """Every bucket from the one holding `from` to the one holding the last instant before
    `to`, aligned to the granularity in UTC."""
    step = req.granularity.seconds
    first = int(req.start.timestamp()) // step * step
    last = (int(req.end.timestamp() - 0.001)) // step * step
    return [datetime.fromtimestamp(t, UTC) for t in range(first, last + 1, step)]


@analytics.request(TIMESERIES)
async def timeseries(req: Timeseries, admin: Admin, store: Store) -> TimeseriesReply:
    """Revenue, orders, units or active users per minute, hour or day (empty buckets are 0)."""
    starts = bucket_starts(req)
    step = req.granularity.seconds
    span = (starts[0], starts[-1] + timedelta(seconds=step))
    approximate = False
    if req.metric is Metric.active_users:
        values, approximate = await store.active_users_series(*span, step)
    else:
        values = await store.sales_series(*span, step, req.metric.value)
    points = [Point(start=s, value=values.get(int(s.timestamp()), Decimal(0))) for s in starts]
    return TimeseriesReply(metric=req.metric, granularity=req.granularity, points=points,
                           approximate=approximate)


@analytics.request(TOP_PRODUCTS)
async def top_products(req: TopProducts, admin: Admin, store: Store) -> TopProductsReply:
    """The best-selling products by revenue or units."""
    rows = await store.top_products(req.start, req.end, req.by.value, req.limit)
    return TopProductsReply(by=req.by, products=rows)


def steps(counts: dict[str, int]) -> list[dict]:
    names = list(counts)
    return [{"step": name, "count": counts[name],
             "conversion": ratio(counts[name], counts[names[i - 1]]) if i else Decimal(1)}
            for i, name in enumerate(names)]


@analytics.request(FUNNEL)
async def funnel(req: Funnel, admin: Admin, store: Store) -> FunnelReply:
    """How far orders got (created → delivered) and shoppers got (viewed → purchased)."""
    orders = await store.order_funnel(req.start, req.end)
    shoppers = await store.shopper_funnel(req.start, req.end)
    return FunnelReply(orders=steps(orders), shoppers=steps(shoppers))


@analytics.request(INVENTORY)
async def inventory(req: InventoryQuery, admin: Admin, store: Store) -> InventoryReply:
    """Stock levels, movement in the window, and the products running low."""
    products = await store.stock(req.start, req.end, req.limit)
    low = await store.low_stock(req.start, req.end, req.low_stock_threshold, req.limit)
    return InventoryReply(products=[StockFigures(**p) for p in products],
                          low_stock=[StockFigures(**p) for p in low],
                          low_stock_alerts=await store.low_stock_alerts(req.start, req.end))


@analytics.request(USERS)
async def users(req: Users, admin: Admin, store: Store) -> UsersReply:
    """Active users, new registrations, and new versus returning customers."""
    return UsersReply(**await store.users(req.start, req.end))

