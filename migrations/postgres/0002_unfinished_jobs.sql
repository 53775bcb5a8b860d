-- The reconciler's backlog metric reads the oldest job without a final state.
CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE state NOT IN ('COMPLETED', 'FAILED');
