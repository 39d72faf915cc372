"""The catalog set: products, stock, price quotes, and the stock side of the order saga."""

from handlers.catalog import background, inventory, products, saga
from handlers.catalog.service import catalog

__all__ = ["catalog", "background", "inventory", "products", "saga"]
