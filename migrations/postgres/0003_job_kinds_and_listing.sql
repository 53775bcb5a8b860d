-- Enrolment jobs beside authentications; jobs stored before are authentications.
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'AUTHENTICATION';
-- ListJobs pages newest first, over every job or one user's.
CREATE INDEX jobs_newest ON jobs (created_at DESC, job_id DESC);
CREATE INDEX jobs_newest_by_user ON jobs (user_id, created_at DESC, job_id DESC);
