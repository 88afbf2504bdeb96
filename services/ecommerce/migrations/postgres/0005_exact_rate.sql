-- Rates are exact decimals (docs/design.md, "Money"). As in SQLite (see its 0005):
-- * orders gets `rate_exact` (decimal text, e.g. '5.31'), the rate the order was priced at; the
--   old DOUBLE PRECISION `rate` is no longer written. Old rows are carried over as the shortest
--   text that reads back as their float (PostgreSQL 12+: 5.31 gives '5.31').
-- * last_rate.rate becomes TEXT in place.
ALTER TABLE orders ADD COLUMN rate_exact TEXT;
UPDATE orders SET rate_exact = rate::text WHERE rate IS NOT NULL;

ALTER TABLE last_rate ALTER COLUMN rate TYPE TEXT USING rate::text;
