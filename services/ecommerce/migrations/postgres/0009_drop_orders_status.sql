-- `orders_status (status)` is redundant: `orders_due (status, next_attempt_at)` serves every
-- lookup by status (the planner already chose it), and keeping both cost every purchase about
-- one more page written at each of the order's two writes, for nothing
-- (docs/benchmarks/happy-path.md).
DROP INDEX IF EXISTS orders_status;
