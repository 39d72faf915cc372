"""Stock: read it, adjust it (administrators), and quote an order against it."""

from contracts.catalog import (
    INVENTORY_ADJUST,
    INVENTORY_GET,
    QUOTE,
    AdjustInventory,
    GetInventory,
    Inventory,
    Quote,
    QuoteRequest,
)
from contracts.errors import NotFound
from contracts.events import InventoryAdjusted
from handlers.catalog import SCHEMA, Cache, catalog
from handlers.catalog.events import low_stock_events
from handlers.deps import Admin, Db, Pool
from storage import catalog as catalog_db
from storage import outbox


@catalog.request(INVENTORY_GET)
async def get_inventory(req: GetInventory, db: Db) -> Inventory:
    """On-hand, held, reserved and available stock of a product."""
    if (stock := await catalog_db.inventory(db, req.product_id)) is None:
        raise NotFound("product", req.product_id)
    return stock


@catalog.request(INVENTORY_ADJUST)
async def adjust_inventory(req: AdjustInventory, admin: Admin, db: Db, cache: Cache) -> Inventory:
    """Adds or removes on-hand stock with a reason (administrators); 409 below zero."""
    async with db.transaction():
        adjusted = await catalog_db.adjust_stock(db, req.product_id, req.delta, req.reason,
                                                 admin.user_id)
        if adjusted is None:
            raise NotFound("product", req.product_id)
        stock, change = adjusted
        await outbox.add(db, SCHEMA, InventoryAdjusted(
            product_id=stock.product_id, delta=req.delta, reason=req.reason,
            on_hand=stock.on_hand, available=stock.available), *low_stock_events(change))
    await cache.invalidate(stock.product_id)
    return stock


@catalog.request(QUOTE)
async def quote(req: QuoteRequest, pool: Pool) -> Quote:
    """Current prices and availability of a list of items; orders.create prices orders by it."""
    # One SELECT: the pool's own fetch holds a connection for just that statement.
    return await catalog_db.quote(pool, req.items)
