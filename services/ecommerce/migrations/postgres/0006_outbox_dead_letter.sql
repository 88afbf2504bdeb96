-- Dead letters of the bonus outbox (issue 14, class 6). An entry Fidelity refuses with a final
-- 4xx (400, 409, 413, 415, 422: the same request can only be refused again) is no longer
-- retried (it used to be, hourly, forever): `dead_lettered_at` is set, the dispatcher skips it,
-- and GET /backlog, `shop_outbox_dead_letters` and the FtshopBonusDeadLettered alert show it
-- until an operator deals with it (docs/runbooks.md). Its order's bonus_status says 'dead-letter'.
ALTER TABLE bonus_outbox ADD COLUMN dead_lettered_at BIGINT;
CREATE INDEX bonus_outbox_dead_letters ON bonus_outbox (dead_lettered_at);
