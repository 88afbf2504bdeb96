-- Dead letters of the pending-bonus queue (issue 14, class 6). A queued bonus whose transaction
-- id was already credited with another user or amount (a conflict) can never be credited; it
-- used to be deleted, losing a bonus that had been answered 202. It is now kept with
-- `dead_lettered_at` set: the worker skips it, the queue depth, age and readiness leave it out,
-- and GET /bonus/pending and `fidelity_dead_letter_bonuses` show it until an operator acts.
ALTER TABLE pending_bonuses ADD COLUMN dead_lettered_at BIGINT;
CREATE INDEX pending_bonuses_dead_letters ON pending_bonuses (dead_lettered_at);
