-- One row per credited transaction: the primary key is what makes a bonus count exactly once.
-- A user's balance is the sum of their rows, so it can never drift from the ledger.
CREATE TABLE credits (
    transaction_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    points BIGINT NOT NULL CHECK (points > 0),
    created_at BIGINT NOT NULL -- epoch milliseconds
);

CREATE INDEX credits_user_id ON credits (user_id);
