"""The catalog set: products, stock, price quotes, and the stock side of the order saga.

This module is the set itself: its HandlerSet, its schema, and what its handlers receive beyond
the shared clients. The handlers are in the modules beside it, imported at the end, so that
they find the set here when they register on it.
"""

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


# The handlers, registered on the set as they are imported (each imports the set from here).
from handlers.catalog import background, inventory, products, saga  # noqa: E402

__all__ = ["catalog", "background", "inventory", "products", "saga"]
