-- The identity that created each event's job, so that a caller's own events
-- are read by index, never by filtering everyone's.
ALTER TABLE job_events ADD COLUMN owner TEXT;
UPDATE job_events SET owner = (SELECT owner FROM jobs WHERE jobs.job_id = job_events.job_id);
CREATE INDEX job_events_by_owner ON job_events (owner, id);
