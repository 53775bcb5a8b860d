-- Retention finds finished jobs by when they last changed.
CREATE INDEX jobs_finished ON jobs (updated_at) WHERE state IN ('COMPLETED', 'FAILED');
