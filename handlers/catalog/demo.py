"""A deterministic demo catalog: the same few hundred products, prices and stock on every machine,
loaded once by `atlantic up`."""

import random
from decimal import Decimal

import asyncpg

from contracts.catalog import CreateProduct
from contracts.events import ProductCreated
from handlers.catalog import SCHEMA
from storage import catalog as catalog_db
from storage import outbox

SEED = 20_240_601
PRODUCTS_PER_CATEGORY = 30
DEMO_LOCK = 0x43415441  # serialises two `up`s seeding at once

# category: (SKU prefix, price range, adjectives, nouns)
CATEGORIES: dict[str, tuple[str, tuple[int, int], list[str], list[str]]] = {
    "Electronics": ("ELEC", (15, 1200), ["Wireless", "Smart", "Portable", "4K", "Noise-Cancelling",
                                         "Compact", "Pro", "Ultra-Slim"],
                    ["Headphones", "Speaker", "Monitor", "Keyboard", "Webcam", "Charger",
                     "Tablet", "Router", "Smartwatch", "E-Reader"]),
    "Books": ("BOOK", (6, 60), ["Illustrated", "Complete", "Pocket", "Annotated", "Hardcover",
                                "Collected"],
              ["Cookbook", "Atlas", "Field Guide", "Novel", "Poetry Anthology", "History of Rome",
               "Python Handbook", "Travel Journal", "Garden Almanac"]),
    "Home & Kitchen": ("HOME", (8, 400), ["Stainless", "Non-Stick", "Ceramic", "Bamboo",
                                          "Cast-Iron", "Glass"],
                       ["Frying Pan", "Chef's Knife", "Cutting Board", "Kettle", "Coffee Grinder",
                        "Mixing Bowls", "Dutch Oven", "Toaster", "Spice Rack"]),
    "Clothing": ("CLTH", (10, 250), ["Organic Cotton", "Merino", "Linen", "Waterproof", "Slim-Fit",
                                     "Recycled"],
                 ["T-Shirt", "Hoodie", "Rain Jacket", "Chinos", "Socks", "Beanie", "Scarf",
                  "Sweater"]),
    "Sports & Outdoors": ("SPRT", (9, 600), ["Ultralight", "Trail", "Insulated", "Adjustable",
                                            "All-Weather"],
                          ["Tent", "Backpack", "Yoga Mat", "Water Bottle", "Running Shoes",
                           "Headlamp", "Sleeping Bag", "Dumbbell Set"]),
    "Toys & Games": ("TOYS", (5, 150), ["Wooden", "Classic", "Educational", "Deluxe", "Magnetic"],
                     ["Puzzle", "Board Game", "Building Blocks", "Kite", "Train Set",
                      "Card Game", "Marble Run"]),
    "Beauty": ("BEAU", (4, 120), ["Hydrating", "Vegan", "Fragrance-Free", "Mineral", "Herbal"],
               ["Face Cream", "Shampoo", "Lip Balm", "Sunscreen", "Body Lotion", "Hair Oil"]),
    "Grocery": ("GROC", (2, 40), ["Organic", "Fair-Trade", "Single-Origin", "Smoked", "Wild"],
                ["Coffee Beans", "Olive Oil", "Honey", "Green Tea", "Dark Chocolate", "Pasta",
                 "Sea Salt"]),
    "Garden": ("GARD", (5, 300), ["Heavy-Duty", "Solar", "Foldable", "Galvanised", "Self-Watering"],
               ["Hose", "Planter", "Pruning Shears", "Garden Lights", "Wheelbarrow",
                "Seed Starter Kit"]),
    "Office": ("OFFC", (3, 500), ["Ergonomic", "Recycled", "Refillable", "Standing", "Magnetic"],
               ["Desk Chair", "Notebook", "Fountain Pen", "Desk Lamp", "Whiteboard",
                "Monitor Stand", "Stapler"]),
}


def _price(rng: random.Random, low: int, high: int) -> Decimal:
    # Shop prices: whole units ending in .99, .49 or .00, skewed towards the cheap end.
    units = int(low + (high - low) * rng.random() ** 2)
    return Decimal(units) + rng.choice([Decimal("0.99"), Decimal("0.49"), Decimal("0.00")])


def demo_products(seed: int = SEED) -> list[tuple[str, CreateProduct]]:
    """(productId, product) pairs; the same seed always gives the same catalog."""
    rng = random.Random(seed)
    products = []
    for category, (prefix, (low, high), adjectives, nouns) in CATEGORIES.items():
        names = [f"{a} {n}" for a in adjectives for n in nouns]
        for number, name in enumerate(rng.sample(names, PRODUCTS_PER_CATEGORY), start=1):
            stock = rng.choice([0, 3, 8, 12, 25, 40, 60, 100, 150, 250])
            products.append((f"{rng.getrandbits(128):032x}", CreateProduct(
                sku=f"{prefix}-{number:04d}", name=name, category=category,
                description=f"{name} from the Atlantic demo catalog, in {category.lower()}.",
                price=_price(rng, low, high), stock=stock,
                low_stock_threshold=rng.choice([5, 10]),
            )))
    return products


async def load_demo_catalog(db: asyncpg.Connection) -> int:
    """Loads the demo catalog when the catalog is empty; returns how many products it added."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", DEMO_LOCK)
        if await catalog_db.count_products(db):
            return 0
        events = []
        for product_id, req in demo_products():
            product = await catalog_db.insert_product(db, product_id, req)
            events.append(ProductCreated(
                product_id=product_id, sku=product.sku, name=product.name,
                category=product.category, price=product.price, active=product.active,
                on_hand=req.stock))
        await outbox.add(db, SCHEMA, *events)
    return len(events)
