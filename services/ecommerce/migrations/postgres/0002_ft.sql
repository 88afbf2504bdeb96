-- The fault-tolerant path: deferred sales and the bonus outbox.
-- `pending` orders (sale deferred) and abandoned `processing` ones are driven to `completed` or
-- `cancelled` by the order worker; `attempts` and `next_attempt_at` pace its retries.
ALTER TABLE orders ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN next_attempt_at BIGINT;
ALTER TABLE orders ADD COLUMN cancel_reason TEXT;
ALTER TABLE orders ADD COLUMN completed_sync BIGINT;
CREATE INDEX orders_due ON orders (status, next_attempt_at);

-- Bonuses not yet acknowledged by Fidelity. Written in the same transaction as the order's
-- completion; deleted when Fidelity acknowledges (it credits once per transaction_id).
CREATE TABLE bonus_outbox (
    transaction_id  TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    points          BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX bonus_outbox_due ON bonus_outbox (next_attempt_at);
