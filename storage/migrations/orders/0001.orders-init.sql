-- The orders schema: orders, their lines and status history, client idempotency keys, events
-- the state machine refused, plus this set's outbox and inbox.
CREATE SCHEMA IF NOT EXISTS orders;

CREATE TABLE orders.orders (
    id                  text PRIMARY KEY,
    customer_id         text NOT NULL,
    status              text NOT NULL CHECK (status IN ('CREATED', 'VALIDATED', 'PAID', 'RESERVED',
                                                        'SHIPPED', 'DELIVERED', 'CANCELLED',
                                                        'RETURNED')),
    total_price         numeric(14, 2) NOT NULL CHECK (total_price >= 0),
    paid_amount         numeric(14, 2) NOT NULL DEFAULT 0 CHECK (paid_amount >= 0),
    refunded_amount     numeric(14, 2) NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    shipment_id         text,
    carrier             text,
    tracking_number     text,
    cancellation_reason text,
    return_reason       text,
    delivered_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
-- Own orders newest first, and everyone's for admins; keyset pagination on (created_at, id).
CREATE INDEX orders_by_customer ON orders.orders (customer_id, created_at DESC, id DESC);
CREATE INDEX orders_by_created ON orders.orders (created_at DESC, id DESC);
-- The deadline sweep looks only at orders still waiting on the saga.
CREATE INDEX orders_in_flight ON orders.orders (created_at)
    WHERE status IN ('CREATED', 'VALIDATED', 'PAID');

CREATE TABLE orders.order_items (
    order_id   text NOT NULL REFERENCES orders.orders (id),
    product_id text NOT NULL,
    quantity   integer NOT NULL CHECK (quantity > 0),
    price      numeric(14, 2) NOT NULL CHECK (price >= 0),
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE orders.history (
    id       bigserial PRIMARY KEY,
    order_id text NOT NULL REFERENCES orders.orders (id),
    status   text NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    note     text
);
CREATE INDEX history_by_order ON orders.history (order_id, id);

-- A retried create with the same Idempotency-Key returns the order the first one made.
CREATE TABLE orders.idempotency_keys (
    customer_id  text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    order_id     text NOT NULL REFERENCES orders.orders (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, key)
);

-- Events the state machine did not apply (not legal in the order's status), kept for operators.
CREATE TABLE orders.ignored_events (
    event_id    text PRIMARY KEY,
    order_id    text NOT NULL,
    event       text NOT NULL,
    status_then text NOT NULL,
    reason      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders.outbox (
    event_id     text PRIMARY KEY,
    subject      text NOT NULL,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);
CREATE INDEX orders_outbox_unpublished ON orders.outbox (created_at) WHERE published_at IS NULL;

CREATE TABLE orders.inbox (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
