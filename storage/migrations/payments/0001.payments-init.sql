-- The payments schema: one payment per order, the refunds given, the sandbox provider's own
-- ledger (standing in for an outside system), plus this set's outbox and inbox.
CREATE SCHEMA IF NOT EXISTS payments;

CREATE TABLE payments.payments (
    order_id        text PRIMARY KEY,
    customer_id     text NOT NULL,
    state           text NOT NULL CHECK (state IN ('PENDING', 'CHARGED', 'DECLINED', 'VOIDED',
                                                   'REFUNDED')),
    amount          numeric(14, 2) NOT NULL CHECK (amount >= 0),
    payment_id      text,
    charged_amount  numeric(14, 2) NOT NULL DEFAULT 0 CHECK (charged_amount >= 0),
    refunded_amount numeric(14, 2) NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    decline_reason  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refunds_within_charge CHECK (refunded_amount <= charged_amount)
);

-- The sandbox provider's books: one row per idempotency key, as a real provider keeps them,
-- so a charge or refund retried after a crash returns the first answer instead of a second one.
CREATE TABLE payments.sandbox_ledger (
    idempotency_key text PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('charge', 'refund')),
    reference       text NOT NULL,
    customer_id     text NOT NULL,
    amount          numeric(14, 2) NOT NULL,
    approved        boolean NOT NULL,
    decline_reason  text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments.outbox (
    event_id     text PRIMARY KEY,
    subject      text NOT NULL,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);
CREATE INDEX payments_outbox_unpublished ON payments.outbox (created_at)
    WHERE published_at IS NULL;

CREATE TABLE payments.inbox (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
