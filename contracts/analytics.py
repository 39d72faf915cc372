"""The analytics set: behaviour tracking in, dashboard figures out.

Every figure is computed over a window [from, to) of event time (the events' own `timestamp`),
so late and out-of-order arrivals land where they belong. Money is exact; rates are fractions
rounded to four places.
"""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AwareDatetime,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)

from contracts.base import Id, Money, NoControls, Request, Wire, utc_now
from contracts.events import Event

TRACK = "atlantic.analytics.track"
SUMMARY = "atlantic.analytics.summary"
TIMESERIES = "atlantic.analytics.timeseries"
TOP_PRODUCTS = "atlantic.analytics.top_products"
FUNNEL = "atlantic.analytics.funnel"
INVENTORY = "atlantic.analytics.inventory"
USERS = "atlantic.analytics.users"

PRODUCT_VIEWED = "atlantic.events.behavior.product_viewed"
ADDED_TO_CART = "atlantic.events.behavior.added_to_cart"
REMOVED_FROM_CART = "atlantic.events.behavior.removed_from_cart"
SEARCHED = "atlantic.events.behavior.search"
CHECKOUT_STARTED = "atlantic.events.behavior.checkout_started"

MAX_WINDOW = timedelta(days=400)  # a little over a year: the default retention
# The moments a window may name: those ClickHouse's DateTime64 holds, where the events are kept
# (and far enough from Python's own limits that the default window never overflows).
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(2300, 1, 1, tzinfo=UTC)
DEFAULT_WINDOW = timedelta(hours=24)
MAX_TRACK_EVENTS = 100  # per track request
MAX_LIMIT = 100  # rows in any list reply
MAX_POINTS = 1_500  # buckets in one timeseries reply
MAX_CART_QUANTITY = 10_000

Quantity = Annotated[int, Field(ge=1, le=MAX_CART_QUANTITY)]
SearchText = Annotated[str, Field(min_length=1, max_length=200)]
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT)]


# --- Behaviour events: what shoppers do before they order (published by analytics.track) ---

class BehaviorEvent(Event):
    """A shopper's action. userId when signed in (taken from the session, never from the
    client), otherwise the client's anonymousId."""

    user_id: Id | None = None
    anonymous_id: Id | None = None


class ProductViewed(BehaviorEvent):
    subject: ClassVar[str] = PRODUCT_VIEWED
    event: Literal["ProductViewed"] = "ProductViewed"
    product_id: Id


class AddedToCart(BehaviorEvent):
    subject: ClassVar[str] = ADDED_TO_CART
    event: Literal["AddedToCart"] = "AddedToCart"
    product_id: Id
    quantity: Quantity


class RemovedFromCart(BehaviorEvent):
    subject: ClassVar[str] = REMOVED_FROM_CART
    event: Literal["RemovedFromCart"] = "RemovedFromCart"
    product_id: Id
    quantity: Quantity


class Searched(BehaviorEvent):
    subject: ClassVar[str] = SEARCHED
    event: Literal["Searched"] = "Searched"
    query: SearchText
    result_count: int | None = Field(None, ge=0, le=1_000_000)


class CheckoutStarted(BehaviorEvent):
    subject: ClassVar[str] = CHECKOUT_STARTED
    event: Literal["CheckoutStarted"] = "CheckoutStarted"
    item_count: int = Field(ge=0, le=1_000)
    cart_value: Money | None = None


# --- analytics.track ------------------------------------------------------------------------

class _Tracked(Request):
    # A client-chosen id makes retries idempotent; the server derives the eventId from it.
    client_event_id: Id | None = None


class TrackProductViewed(_Tracked):
    type: Literal["product_viewed"]
    product_id: Id


class TrackAddedToCart(_Tracked):
    type: Literal["added_to_cart"]
    product_id: Id
    quantity: Quantity = 1


class TrackRemovedFromCart(_Tracked):
    type: Literal["removed_from_cart"]
    product_id: Id
    quantity: Quantity = 1


class TrackSearch(_Tracked):
    type: Literal["search"]
    query: Annotated[SearchText, NoControls]
    result_count: int | None = Field(None, ge=0, le=1_000_000)


class TrackCheckoutStarted(_Tracked):
    type: Literal["checkout_started"]
    item_count: int = Field(ge=0, le=1_000)
    cart_value: Money | None = None


TrackedEvent = Annotated[
    TrackProductViewed | TrackAddedToCart | TrackRemovedFromCart | TrackSearch
    | TrackCheckoutStarted,
    Field(discriminator="type"),
]


class Track(Request):
    """A batch of behaviour events. Anonymous callers must send anonymousId; a signed-in
    caller's events carry their userId (a token that is sent must be valid)."""

    anonymous_id: Id | None = None
    events: list[TrackedEvent] = Field(min_length=1, max_length=MAX_TRACK_EVENTS)


class Tracked(Wire):
    accepted: int
    event_ids: list[str]


# --- Query windows ----------------------------------------------------------------------------

def _check_span(start: datetime, end: datetime) -> None:
    if start >= end:
        raise ValueError("must be after from")
    if end - start > MAX_WINDOW:
        raise ValueError(f"the window may span at most {MAX_WINDOW.days} days")


def window_of(data: dict) -> tuple[datetime, datetime]:
    """The window a request's fields describe, with the defaults applied."""
    end = data.get("to") or utc_now()
    return data.get("from_") or end - DEFAULT_WINDOW, end


class Window(Request):
    """[from, to) in UTC; both optional (to defaults to now, from to 24 hours before to)."""

    from_: AwareDatetime | None = Field(None, alias="from")
    to: AwareDatetime | None = None

    @field_validator("from_", "to")
    @classmethod
    def _in_range(cls, moment: datetime | None) -> datetime | None:
        if moment is not None and not EARLIEST <= moment < LATEST:
            raise ValueError("must be between 1900-01-01 and 2299-12-31 (UTC)")
        return moment

    @field_validator("to")
    @classmethod
    def _after_from(cls, to: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("from_")
        if to is not None and start is not None:
            _check_span(start, to)
        return to

    @model_validator(mode="after")
    def _defaults(self) -> "Window":
        self.to = self.to or utc_now()
        self.from_ = self.from_ or self.to - DEFAULT_WINDOW
        _check_span(self.from_, self.to)
        return self

    @property
    def start(self) -> datetime:
        assert self.from_ is not None
        return self.from_

    @property
    def end(self) -> datetime:
        assert self.to is not None
        return self.to


class Summary(Window):
    pass


class Metric(StrEnum):
    revenue = "revenue"
    orders = "orders"
    units = "units"
    active_users = "active_users"


class Granularity(StrEnum):
    minute = "minute"
    hour = "hour"
    day = "day"

    @property
    def seconds(self) -> int:
        return {"minute": 60, "hour": 3_600, "day": 86_400}[self.value]


class Timeseries(Window):
    metric: Metric
    granularity: Granularity = Granularity.hour

    @field_validator("granularity")
    @classmethod
    def _few_enough_points(cls, granularity: Granularity, info: ValidationInfo) -> Granularity:
        start, end = window_of(info.data)
        points = (end - start).total_seconds() / granularity.seconds
        if points > MAX_POINTS:
            raise ValueError(f"the window would have {int(points)} points; the limit is "
                             f"{MAX_POINTS}; choose a coarser granularity")
        return granularity


class TopBy(StrEnum):
    revenue = "revenue"
    units = "units"


class TopProducts(Window):
    by: TopBy = TopBy.revenue
    limit: Limit = 10


class Funnel(Window):
    pass


class InventoryQuery(Window):
    low_stock_threshold: int = Field(10, ge=0, le=1_000_000)
    limit: Limit = 50


class Users(Window):
    pass


# --- Replies --------------------------------------------------------------------------------

# Exact in Python, a JSON number on the wire (like Money).
Number = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]
Rate = Annotated[Number, Field(ge=0)]


class IngestStatus(Wire):
    """How far analytics is behind the stream."""

    pending: int | None  # messages on the stream not yet ingested (None: unknown)
    last_ingested_at: datetime | None
    lag_seconds: float | None  # over the last minute: the slowest publication-to-insert delay


class SummaryReply(Wire):
    from_: datetime = Field(alias="from")
    to: datetime
    orders: int  # orders placed (OrderCreated)
    revenue: Money  # their totalPrice: gross sales
    average_order_value: Money
    units: int  # items in those orders
    cancelled: int  # orders cancelled in the window
    returned: int  # orders returned in the window
    refunds: Money  # PaymentProcessed REFUNDED amounts in the window
    net_revenue: Number  # revenue - refunds (may be negative)
    cancel_rate: Rate  # cancelled / orders
    return_rate: Rate  # returned / orders
    ingest: IngestStatus


class Point(Wire):
    start: datetime
    value: Number


class TimeseriesReply(Wire):
    metric: Metric
    granularity: Granularity
    points: list[Point]
    # activeUsers over windows longer than 3 days: uniqCombined estimates, a standard error of
    # about 1.6% (the other metrics are always exact)
    approximate: bool = False


class ProductFigures(Wire):
    product_id: str
    revenue: Money
    units: int
    orders: int


class TopProductsReply(Wire):
    by: TopBy
    products: list[ProductFigures]


class Step(Wire):
    step: str
    count: int
    conversion: Rate  # from the previous step (1 for the first)


class FunnelReply(Wire):
    orders: list[Step]  # orders created in the window and how far they got
    shoppers: list[Step]  # people active in the window: viewed, added, checkout, purchased


class StockFigures(Wire):
    product_id: str
    on_hand: int | None  # the latest level reported before `to`
    available: int | None
    units_in: int  # adjustments up in the window
    units_out: int  # adjustments down in the window
    units_reserved: int  # reserved for orders in the window


class InventoryReply(Wire):
    products: list[StockFigures]
    low_stock: list[StockFigures]  # available <= lowStockThreshold, lowest first
    low_stock_alerts: int  # InventoryLow events in the window


class UsersReply(Wire):
    active_users: int  # signed-in people with any event in the window
    new_registrations: int
    customers: int  # people who ordered in the window
    new_customers: int  # of those, first order ever in the window
    returning_customers: int
    # over windows longer than 3 days, activeUsers, customers and returningCustomers are
    # uniqCombined estimates, a standard error of about 1.6% (the others are always exact)
    approximate: bool = False
