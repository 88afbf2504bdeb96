-- One row per purchase attempt. `response` holds the JSON answer so an Idempotency-Key replay
-- returns exactly what the first request got.
CREATE TABLE orders (
    order_id        TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    request_hash    TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    product_id      TEXT NOT NULL,
    ft              BIGINT NOT NULL, -- 0 or 1: the Any driver reads SQLite booleans back as integers
    status          TEXT NOT NULL,
    failed_step     TEXT,
    transaction_id  TEXT,
    value_cents     BIGINT,
    rate            DOUBLE PRECISION,
    total_cents     BIGINT,
    bonus_points    BIGINT,
    bonus_status    TEXT,
    response_status BIGINT,
    response        TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX orders_status ON orders (status);
