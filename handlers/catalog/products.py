"""Products: create and update (administrators), get and list (anyone)."""

from pydantic.alias_generators import to_camel

from contracts.base import new_id
from contracts.catalog import (
    PRODUCTS_CREATE,
    PRODUCTS_GET,
    PRODUCTS_LIST,
    PRODUCTS_UPDATE,
    CreateProduct,
    GetProduct,
    ListProducts,
    Product,
    ProductPage,
    UpdateProduct,
)
from contracts.errors import NotFound
from contracts.events import ProductCreated, ProductUpdated
from handlers.catalog import SCHEMA, Cache, catalog
from handlers.deps import Admin, Db, Pool
from handlers.endpoints import StoredReply
from storage import catalog as catalog_db
from storage import outbox


@catalog.request(PRODUCTS_CREATE)
async def create_product(req: CreateProduct, admin: Admin, db: Db) -> Product:
    """Adds a product with its opening stock (administrators); 409 when the SKU is taken."""
    async with db.transaction():
        product = await catalog_db.insert_product(db, new_id(), req)
        await outbox.add(db, SCHEMA, ProductCreated(
            product_id=product.product_id, sku=product.sku, name=product.name,
            category=product.category, price=product.price, active=product.active,
            on_hand=req.stock))
    return product


@catalog.request(PRODUCTS_UPDATE)
async def update_product(req: UpdateProduct, admin: Admin, db: Db, cache: Cache) -> Product:
    """Changes the fields sent (administrators); the next get sees the change."""
    changes = req.changes()
    async with db.transaction():
        product = await catalog_db.update_product(db, req.product_id, changes)
        if product is None:
            raise NotFound("product", req.product_id)
        await outbox.add(db, SCHEMA, ProductUpdated(
            product_id=product.product_id, changed=sorted(map(to_camel, changes)),
            sku=product.sku, name=product.name, category=product.category,
            price=product.price, active=product.active))
    # After the commit, so that no reader puts the old row back into the cache.
    await cache.invalidate(product.product_id)
    return product


@catalog.request(PRODUCTS_GET)
async def get_product(req: GetProduct, pool: Pool, cache: Cache) -> Product:
    """One product with its available stock, served from Redis when it can be."""
    if (hit := await cache.stored(req.product_id)) is not None:
        # The Product's JSON as encoded when it was cached: sent without decoding it again.
        return StoredReply(hit)  # type: ignore[return-value]
    # Read before the product: a change committed meanwhile keeps this read out of the cache.
    version = await cache.version(req.product_id)
    # A connection only on a miss: a hit then costs no pool wait and no reset round trip.
    async with pool.acquire() as db:
        product = await catalog_db.product(db, req.product_id)
    if product is None:
        raise NotFound("product", req.product_id)
    await cache.put(product, version)
    return product


@catalog.request(PRODUCTS_LIST)
async def list_products(req: ListProducts, db: Db) -> ProductPage:
    """Active products by name, filtered; pass nextCursor back for the following page."""
    items, more = await catalog_db.list_products(db, req)
    cursor = catalog_db.encode_cursor(items[-1]) if more else None
    return ProductPage(items=items, next_cursor=cursor)
