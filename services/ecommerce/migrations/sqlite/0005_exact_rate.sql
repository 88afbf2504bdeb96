-- Rates are exact decimals (docs/design.md, "Money"). SQLite cannot change a column's type, and a
-- REAL column would turn decimal text back into a binary float, so:
-- * orders gets `rate_exact` (decimal text, e.g. '5.31'), the rate the order was priced at; the
--   old REAL `rate` is no longer written. Old rows are carried over as the shortest text of their
--   float (SQLite prints up to 15 significant digits: 5.31 reads back as '5.31').
-- * last_rate is rebuilt with a TEXT rate (a one-row cache of the last good rate).
ALTER TABLE orders ADD COLUMN rate_exact TEXT;
UPDATE orders SET rate_exact = CAST(rate AS TEXT) WHERE rate IS NOT NULL;

CREATE TABLE last_rate_exact (
    pair       TEXT PRIMARY KEY,
    rate       TEXT NOT NULL,
    stored_at  BIGINT NOT NULL
);
INSERT INTO last_rate_exact (pair, rate, stored_at)
    SELECT pair, CAST(rate AS TEXT), stored_at FROM last_rate;
DROP TABLE last_rate;
ALTER TABLE last_rate_exact RENAME TO last_rate;
