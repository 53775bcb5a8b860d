-- Jobs and their event log. Images are never stored.
CREATE TABLE jobs (
    job_id        TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    state         TEXT NOT NULL,
    data          TEXT NOT NULL,
    version       BIGINT NOT NULL,
    last_sequence BIGINT NOT NULL,
    next_poll_at  BIGINT,
    lease_until   BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX jobs_due ON jobs (next_poll_at) WHERE next_poll_at IS NOT NULL;

CREATE TABLE job_events (
    id         BIGSERIAL PRIMARY KEY,
    job_id     TEXT NOT NULL REFERENCES jobs (job_id),
    user_id    TEXT NOT NULL,
    sequence   BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    snapshot   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (job_id, sequence)
);
CREATE INDEX job_events_by_user ON job_events (user_id, id);
