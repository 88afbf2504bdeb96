-- The catalog with its stock, and the sales ledger. `IF NOT EXISTS` because two Store replicas
-- may start on the same SQLite file at once; the loser of that race re-runs the migrator.
CREATE TABLE IF NOT EXISTS products (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    value_cents BIGINT NOT NULL CHECK (value_cents >= 0),
    stock       BIGINT NOT NULL CHECK (stock >= 0)
);

CREATE TABLE IF NOT EXISTS sales (
    transaction_id  TEXT PRIMARY KEY NOT NULL,
    product_id      TEXT NOT NULL REFERENCES products (id),
    value_cents     BIGINT NOT NULL,
    -- Stock right after this sale, so a replayed request gets the very same answer.
    stock_left      BIGINT NOT NULL,
    -- NULL for requests without an `Idempotency-Key`; UNIQUE allows many NULLs.
    idempotency_key TEXT UNIQUE,
    created_at      BIGINT NOT NULL
);

CREATE INDEX IF NOT EXISTS sales_product_id ON sales (product_id);
