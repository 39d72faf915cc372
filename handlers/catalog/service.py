"""The catalog handler set itself, and what its handlers receive beyond the shared clients."""

from typing import Annotated

from handlers.deps import Context
from handlers.handler_set import HandlerSet
from storage.cache import ProductCache

SCHEMA = "catalog"  # this set's PostgreSQL schema: its tables, outbox and inbox

catalog = HandlerSet(
    "catalog", "Products, stock, price quotes, and the stock side of the order saga",
    outbox_schema=SCHEMA,
)

Cache = Annotated[ProductCache, Context("product_cache")]
HoldSeconds = Annotated[float, Context("settings.hold_seconds")]
