-- Trace links (issue 19). A deferred sale and a bonus queued in the outbox are finished later by
-- the order worker and the bonus dispatcher, outside the purchase's request: each keeps the
-- W3C `traceparent` of the purchase's span (`00-<trace id>-<span id>-<flags>`, NULL when the
-- process had no trace context), and the span of the later work links back to it, so the
-- trace of the delivery leads to the purchase and the purchase's trace id finds the delivery.
ALTER TABLE orders ADD COLUMN traceparent TEXT;
ALTER TABLE bonus_outbox ADD COLUMN traceparent TEXT;
