-- Jobs and their event log. Images are never stored.
CREATE TABLE jobs (
    job_id        TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    state         TEXT NOT NULL,
    data          TEXT NOT NULL,
    version       INTEGER NOT NULL,
    last_sequence INTEGER NOT NULL,
    next_poll_at  INTEGER,
    lease_until   INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX jobs_due ON jobs (next_poll_at) WHERE next_poll_at IS NOT NULL;

CREATE TABLE job_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL REFERENCES jobs (job_id),
    user_id    TEXT NOT NULL,
    sequence   INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    snapshot   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (job_id, sequence)
);
CREATE INDEX job_events_by_user ON job_events (user_id, id);
