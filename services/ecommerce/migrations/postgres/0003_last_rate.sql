-- The last exchange rate a replica answered, so a restarted ecommerce still has a last-known-good
-- rate when every Exchange replica is unreachable (bounded by --rate max staleness, 10 min).
CREATE TABLE last_rate (
    pair       TEXT PRIMARY KEY,
    rate       DOUBLE PRECISION NOT NULL,
    stored_at  BIGINT NOT NULL
);
