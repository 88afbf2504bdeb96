-- Bonuses accepted but not yet credited: asked for with `Prefer: respond-async`, or whose
-- inline credit failed. The queue worker credits them (once per transaction_id: the ledger's
-- primary key) and deletes the row.
CREATE TABLE pending_bonuses (
    transaction_id  TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    points          BIGINT NOT NULL CHECK (points > 0),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX pending_bonuses_due ON pending_bonuses (next_attempt_at);
