"""The catalog set: products, stock and price quotes."""

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from contracts.base import Id, Money, NoControls, Request, Wire, money
from contracts.events import MAX_ORDER_LINES, Quantity

PRODUCTS_CREATE = "atlantic.catalog.products.create"
PRODUCTS_UPDATE = "atlantic.catalog.products.update"
PRODUCTS_GET = "atlantic.catalog.products.get"
PRODUCTS_LIST = "atlantic.catalog.products.list"
INVENTORY_GET = "atlantic.catalog.inventory.get"
INVENTORY_ADJUST = "atlantic.catalog.inventory.adjust"
QUOTE = "atlantic.catalog.quote"
# Between catalog processes only (no client may publish it): the products whose cached replies
# are no longer true, as a JSON list of ids.
CACHE_INVALIDATIONS = "atlantic.cache.catalog.products"

MAX_PAGE = 100
MAX_STOCK = 1_000_000

# A price is money above zero: "0.00" is refused like "-1" and "1.005".
Price = money(gt=0, le=Decimal("1000000"))
Sku = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Name = Annotated[str, Field(min_length=1, max_length=200), NoControls]
Description = Annotated[str, Field(max_length=2_000), NoControls]
Category = Annotated[str, Field(min_length=1, max_length=60), NoControls]
Threshold = Annotated[int, Field(ge=0, le=MAX_STOCK)]


class CreateProduct(Request):
    name: Name
    description: Description = ""
    price: Price
    category: Category
    stock: int = Field(0, ge=0, le=MAX_STOCK)
    sku: Sku | None = None  # generated from the product id when left out
    active: bool = True
    low_stock_threshold: Threshold = 5


class UpdateProduct(Request):
    """Only the fields sent change; stock changes go through inventory.adjust."""

    # A field may be left out (its default, None, is not validated); an explicit null would be
    # ambiguous (clear it? keep it?), so the types refuse it. Not a "before" validator: one
    # would hand the fields plain Python values, and strict Decimal would refuse "12.50".
    product_id: Id
    name: Name = None  # type: ignore[assignment]
    description: Description = None  # type: ignore[assignment]
    price: Price = None  # type: ignore[assignment]
    category: Category = None  # type: ignore[assignment]
    sku: Sku = None  # type: ignore[assignment]
    active: bool = None  # type: ignore[assignment]
    low_stock_threshold: Threshold = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _changes_something(self) -> "UpdateProduct":
        if not self.changes():
            raise ValueError("send at least one field to change")
        return self

    def changes(self) -> dict[str, object]:
        return {f: getattr(self, f) for f in self.model_fields_set if f != "product_id"}


class GetProduct(Request):
    product_id: Id


class ListProducts(Request):
    category: Category | None = None
    min_price: Money | None = None
    max_price: Money | None = None
    q: Annotated[str, Field(min_length=1, max_length=200), NoControls] | None = Field(
        None, description="full-text search")
    in_stock: bool = False
    limit: int = Field(20, ge=1, le=MAX_PAGE)
    cursor: Annotated[str, Field(min_length=1, max_length=400), NoControls] | None = Field(None,
                               description="nextCursor from the previous page, as it came")

    @model_validator(mode="after")
    def _range_is_ordered(self) -> "ListProducts":
        if self.min_price is not None and self.max_price is not None \
                and self.min_price > self.max_price:
            raise ValueError("minPrice must not be above maxPrice")
        return self


class GetInventory(Request):
    product_id: Id


class AdjustInventory(Request):
    product_id: Id
    delta: int = Field(ge=-MAX_STOCK, le=MAX_STOCK, description="units added (negative: removed)")
    reason: Annotated[str, Field(min_length=1, max_length=200), NoControls]

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, delta: int) -> int:
        if delta == 0:
            raise ValueError("must not be zero")
        return delta


class ItemLine(Request):
    """A product and how many of it: a line of a quote, and of an order."""

    product_id: Id
    quantity: Quantity


def _one_line_per_product(items: list[ItemLine]) -> list[ItemLine]:
    if len({i.product_id for i in items}) != len(items):
        raise ValueError("each product may appear only once; raise its quantity instead")
    return items


ItemLines = Annotated[list[ItemLine], Field(min_length=1, max_length=MAX_ORDER_LINES),
                      AfterValidator(_one_line_per_product)]


class QuoteRequest(Request):
    items: ItemLines


class Product(Wire):
    product_id: str
    sku: str
    name: str
    description: str
    price: Money
    category: str
    active: bool
    available: int
    created_at: datetime
    updated_at: datetime


class ProductPage(Wire):
    items: list[Product]
    next_cursor: str | None = Field(None, description="pass back as cursor; null on the last page")


class Inventory(Wire):
    """Stock of one product: available = onHand - held - reserved."""

    product_id: str
    on_hand: int
    held: int
    reserved: int
    available: int
    low_stock_threshold: int


QuoteProblem = Literal["not_found", "inactive", "insufficient_stock"]


class QuotedLine(Wire):
    product_id: str
    quantity: int
    name: str | None = None
    price: Money | None = None  # the current unit price; null when the product does not exist
    available: int = 0
    problem: QuoteProblem | None = None


class Quote(Wire):
    items: list[QuotedLine]
    total_price: Money  # the sum of price x quantity over the lines without a problem
    ok: bool  # every line exists, is active and has enough available stock
