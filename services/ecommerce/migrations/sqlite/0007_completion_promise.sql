-- The completion promise of a deferred sale (issue 15). A 202 is accepted only when the
-- measured drain rate of the backlog completes it within the promise (`--defer-promise`);
-- the order keeps when it was expected to complete and the promise's bound (epoch ms), and
-- whether it ended (completed or cancelled) after that bound, so an order that misses the
-- promise anyway is visible in GET /orders/{id} and shop_promise_missed_total.
ALTER TABLE orders ADD COLUMN expected_completion_at BIGINT;
ALTER TABLE orders ADD COLUMN promised_by BIGINT;
ALTER TABLE orders ADD COLUMN promise_missed BIGINT NOT NULL DEFAULT 0; -- 0 or 1
