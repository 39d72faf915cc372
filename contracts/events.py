"""Every event on the ATLANTIC stream: the envelope, the subjects and the bodies."""

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from contracts.base import Id, Money, Wire, new_id, utc_now

STREAM = "ATLANTIC"
EVENTS_PREFIX = "atlantic.events."
ALL_EVENTS = "atlantic.events.>"

USER_REGISTERED = "atlantic.events.user.registered"
USER_LOGGED_IN = "atlantic.events.user.logged_in"


# Every event on the wire by its name ("OrderCreated"): each event class adds itself as it is
# defined (the behaviour events of contracts.analytics too, imported at the end of this module).
EVENT_TYPES: dict[str, type["Event"]] = {}


class Event(Wire):
    """The envelope: every event carries its name, a UTC timestamp and a unique eventId."""

    subject: ClassVar[str]
    event: str
    event_id: str = Field(default_factory=new_id, max_length=64)
    timestamp: datetime = Field(default_factory=utc_now)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # Intermediate bases declare `subject` without a value: they are not on the wire. Tests
        # may define events of their own: only the contracts' count.
        if hasattr(cls, "subject") and cls.__module__.startswith("contracts."):
            EVENT_TYPES[cls.model_fields["event"].default] = cls


class UserRegistered(Event):
    subject: ClassVar[str] = USER_REGISTERED
    event: Literal["UserRegistered"] = "UserRegistered"
    user_id: str
    email: str
    role: str


class UserLoggedIn(Event):
    subject: ClassVar[str] = USER_LOGGED_IN
    event: Literal["UserLoggedIn"] = "UserLoggedIn"
    user_id: str


# --- The order lifecycle (DESIGN "Events"): orders, payments and catalog all speak these. ----

ORDER_CREATED = "atlantic.events.order.created"
ORDER_VALIDATED = "atlantic.events.order.validated"
PAYMENT_PROCESSED = "atlantic.events.order.payment_processed"
INVENTORY_RESERVED = "atlantic.events.order.inventory_reserved"
ORDER_SHIPPED = "atlantic.events.order.shipped"
ORDER_DELIVERED = "atlantic.events.order.delivered"
ORDER_CANCELLED = "atlantic.events.order.cancelled"
ORDER_RETURNED = "atlantic.events.order.returned"

INVENTORY_RESERVATION_FAILED = "atlantic.events.inventory.reservation_failed"
INVENTORY_ADJUSTED = "atlantic.events.inventory.adjusted"
INVENTORY_LOW = "atlantic.events.inventory.low"
PRODUCT_CREATED = "atlantic.events.product.created"
PRODUCT_UPDATED = "atlantic.events.product.updated"

MAX_ORDER_LINES = 100
MAX_QUANTITY = 10_000

PaymentStatus = Literal["SUCCESS", "FAILED", "REFUNDED"]
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY)]
Text = Annotated[str, Field(max_length=500)]


class OrderItem(Wire):
    """One line of an order, at the price the catalog quoted."""

    product_id: Id
    quantity: Quantity
    price: Money


class StockItem(Wire):
    """A product and a quantity of it, without a price."""

    product_id: Id
    quantity: Quantity


class OrderCreated(Event):
    subject: ClassVar[str] = ORDER_CREATED
    event: Literal["OrderCreated"] = "OrderCreated"
    order_id: Id
    customer_id: Id
    items: list[OrderItem] = Field(min_length=1, max_length=MAX_ORDER_LINES)
    total_price: Money


class OrderValidated(Event):
    subject: ClassVar[str] = ORDER_VALIDATED
    event: Literal["OrderValidated"] = "OrderValidated"
    order_id: Id
    is_valid: bool
    # Human-readable reasons, one per failing line; empty when isValid is true.
    validation_errors: list[Text] = Field(default_factory=list, max_length=MAX_ORDER_LINES)


class PaymentProcessed(Event):
    subject: ClassVar[str] = PAYMENT_PROCESSED
    event: Literal["PaymentProcessed"] = "PaymentProcessed"
    order_id: Id
    payment_id: Id
    payment_status: PaymentStatus
    amount: Money


class InventoryReserved(Event):
    subject: ClassVar[str] = INVENTORY_RESERVED
    event: Literal["InventoryReserved"] = "InventoryReserved"
    order_id: Id
    items: list[StockItem] = Field(min_length=1, max_length=MAX_ORDER_LINES)


class OrderShipped(Event):
    subject: ClassVar[str] = ORDER_SHIPPED
    event: Literal["OrderShipped"] = "OrderShipped"
    order_id: Id
    shipment_id: Id
    carrier: Text
    tracking_number: Text


class OrderDelivered(Event):
    subject: ClassVar[str] = ORDER_DELIVERED
    event: Literal["OrderDelivered"] = "OrderDelivered"
    order_id: Id
    delivery_status: Text


class OrderCancelled(Event):
    subject: ClassVar[str] = ORDER_CANCELLED
    event: Literal["OrderCancelled"] = "OrderCancelled"
    order_id: Id
    cancellation_reason: Text


class OrderReturned(Event):
    subject: ClassVar[str] = ORDER_RETURNED
    event: Literal["OrderReturned"] = "OrderReturned"
    order_id: Id
    return_reason: Text
    refund_amount: Money


# --- Catalog and inventory ------------------------------------------------------------------

class InventoryReservationFailed(Event):
    """A payment succeeded but the order's hold had expired and the stock was gone."""

    subject: ClassVar[str] = INVENTORY_RESERVATION_FAILED
    event: Literal["InventoryReservationFailed"] = "InventoryReservationFailed"
    order_id: Id
    items: list[StockItem] = Field(max_length=MAX_ORDER_LINES)
    reason: Text


class ProductCreated(Event):
    subject: ClassVar[str] = PRODUCT_CREATED
    event: Literal["ProductCreated"] = "ProductCreated"
    product_id: Id
    sku: str
    name: str
    category: str
    price: Money
    active: bool
    on_hand: int


class ProductUpdated(Event):
    subject: ClassVar[str] = PRODUCT_UPDATED
    event: Literal["ProductUpdated"] = "ProductUpdated"
    product_id: Id
    changed: list[str]  # the camelCase names of the fields this update changed
    sku: str
    name: str
    category: str
    price: Money
    active: bool


class InventoryAdjusted(Event):
    subject: ClassVar[str] = INVENTORY_ADJUSTED
    event: Literal["InventoryAdjusted"] = "InventoryAdjusted"
    product_id: Id
    delta: int
    reason: Text
    on_hand: int
    available: int


class InventoryLow(Event):
    """Available stock of a product fell below its low-stock threshold."""

    subject: ClassVar[str] = INVENTORY_LOW
    event: Literal["InventoryLow"] = "InventoryLow"
    product_id: Id
    available: int
    threshold: int


# The behaviour events (published by analytics.track) live beside their requests; importing them
# here makes EVENT_TYPES whole whichever contracts module is imported first.
import contracts.analytics  # noqa: E402, F401
