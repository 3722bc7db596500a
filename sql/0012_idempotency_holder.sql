-- The process that holds an Idempotency-Key's claim (storage/liveness.py): the second
-- key of the advisory lock that process holds while it lives. A claim whose holder's
-- lock is free was left by a process that is gone and may be taken over at once,
-- instead of after its locked_until. NULL: no holder known (older rows, or a process
-- whose lock connection was down); locked_until alone decides.
ALTER TABLE idempotency_keys ADD COLUMN holder integer;
