-- The identity of the caller that created each job; ListJobs pages a caller's own.
ALTER TABLE jobs ADD COLUMN owner TEXT;
CREATE INDEX jobs_newest_by_owner ON jobs (owner, created_at DESC, job_id DESC);
