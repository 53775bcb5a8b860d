-- The user lifecycle: where each user stands as last set through the service,
-- the operation being carried out at Smile ID (due_at: when to try it next),
-- and the tombstones of deleted users, whose jobs are refused (refuses_jobs).
ALTER TABLE users ADD COLUMN data TEXT;
ALTER TABLE users ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE users ADD COLUMN due_at BIGINT;
ALTER TABLE users ADD COLUMN refuses_jobs BIGINT NOT NULL DEFAULT 0;
CREATE INDEX users_due ON users (due_at) WHERE due_at IS NOT NULL;
