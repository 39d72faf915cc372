-- depends: 0001.orders-init
-- The W3C trace context of the code that wrote the event (null outside a trace): the relay
-- sends it with the event, so a trace goes on past the outbox.
ALTER TABLE orders.outbox ADD COLUMN IF NOT EXISTS traceparent text;
