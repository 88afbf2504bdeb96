-- Every state transition of an order is a compare-and-set on `version`: whoever claims the
-- order (a request, a replay, the order worker) holds the version it wrote, and every later
-- write of that holder is `... WHERE order_id = $1 AND version = $held`, bumping it again. A
-- concurrent replay or a second worker that read the same row loses the race cleanly (0 rows)
-- instead of driving the order a second time, and a holder that was superseded (it looked
-- abandoned) can no longer overwrite the newer outcome.
ALTER TABLE orders ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
