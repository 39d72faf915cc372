-- The catalog schema: products with their stock, the holds orders place on it, plus this set's
-- outbox and inbox.
CREATE SCHEMA IF NOT EXISTS catalog;

-- Stock lives on the product row, so one row lock serialises every change to a product's stock.
-- available = on_hand - held - reserved, and the CHECKs keep every figure at zero or above.
CREATE TABLE catalog.products (
    id                  text PRIMARY KEY,
    sku                 text NOT NULL UNIQUE,
    name                text NOT NULL,
    description         text NOT NULL DEFAULT '',
    price               numeric(14, 2) NOT NULL CHECK (price > 0),
    category            text NOT NULL,
    active              boolean NOT NULL DEFAULT true,
    on_hand             integer NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
    held                integer NOT NULL DEFAULT 0 CHECK (held >= 0),
    reserved            integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    low_stock_threshold integer NOT NULL DEFAULT 5 CHECK (low_stock_threshold >= 0),
    search              tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', name), 'A')
        || setweight(to_tsvector('english', category), 'B')
        || setweight(to_tsvector('english', description), 'C')) STORED,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_available_not_negative CHECK (held + reserved <= on_hand)
);
-- products.list pages through (name, id), with or without a category filter.
CREATE INDEX products_by_name ON catalog.products (name, id);
CREATE INDEX products_by_category ON catalog.products (category, name, id);
CREATE INDEX products_search ON catalog.products USING gin (search);

-- What the catalog holds for one order. The state follows the saga:
--   held -> reserved -> shipped -> returned, and held -> released | expired,
--   reserved -> released (cancelled after payment), held/expired -> failed (stock gone at payment).
-- rejected: validation failed, nothing held. cancelled: the cancel arrived before the order.
CREATE TABLE catalog.holds (
    order_id   text PRIMARY KEY,
    state      text NOT NULL CHECK (state IN ('rejected', 'held', 'reserved', 'released',
                                               'expired', 'failed', 'shipped', 'returned',
                                               'cancelled')),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX holds_expiring ON catalog.holds (expires_at) WHERE state = 'held';

-- The quantity of each product an order holds, one row per (order, product).
CREATE TABLE catalog.hold_lines (
    order_id   text NOT NULL REFERENCES catalog.holds (order_id) ON DELETE CASCADE,
    product_id text NOT NULL REFERENCES catalog.products (id),
    quantity   integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX hold_lines_by_product ON catalog.hold_lines (product_id);

-- Every administrator's stock adjustment, with its reason.
CREATE TABLE catalog.adjustments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id  text NOT NULL REFERENCES catalog.products (id),
    delta       integer NOT NULL CHECK (delta <> 0),
    reason      text NOT NULL,
    adjusted_by text NOT NULL,
    adjusted_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE catalog.outbox (
    event_id     text PRIMARY KEY,
    subject      text NOT NULL,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);
CREATE INDEX catalog_outbox_unpublished ON catalog.outbox (created_at) WHERE published_at IS NULL;

CREATE TABLE catalog.inbox (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
