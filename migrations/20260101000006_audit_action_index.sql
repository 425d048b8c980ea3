-- no-transaction
-- (The line above must stay first: CREATE INDEX CONCURRENTLY cannot run in a
-- transaction, so this migration runs without one. It builds the index
-- without locking the audit log against writes.)
CREATE INDEX CONCURRENTLY IF NOT EXISTS activity_log_action_idx ON audit.activity_log (action, occurred_at DESC);
