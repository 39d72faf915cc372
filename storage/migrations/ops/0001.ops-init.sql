-- The ops schema belongs to the runtime, not to a handler set: what operators must look at.
CREATE SCHEMA IF NOT EXISTS ops;

-- Events a consumer gave up on: malformed, or still failing after their last delivery.
CREATE TABLE ops.dead_letters (
    id          bigserial PRIMARY KEY,
    consumer    text NOT NULL,
    subject     text NOT NULL,
    stream_seq  bigint NOT NULL,
    event_id    text,
    deliveries  integer NOT NULL,
    error       text NOT NULL,
    payload     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer, stream_seq)
);
