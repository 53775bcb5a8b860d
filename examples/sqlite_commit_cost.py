#!/usr/bin/env python3
"""What SQLite's commits cost a submission, by how many writes share one.

A submission writes twice: its create (the job and its CREATED event) and
Smile ID's acceptance (the job updated and a second event). This runs those
statements against a database migrated with the service's own migrations, in
WAL mode with synchronous=FULL as the service's writer, committing 1, 2, 4 and
8 writes at a time, and prints the process's CPU (user and system) and the
wall time per submission. It measures the store alone, with no service:

    python3 examples/sqlite_commit_cost.py

The database goes in a temporary directory: set TMPDIR to one on the disk a
database would live on (not a tmpfs, where a flush costs nothing).

The figures in `src/store/batch.rs` and `docs/performance.md` came from it.
"""

import glob
import json
import os
import resource
import sqlite3
import tempfile
import time

MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "migrations", "sqlite")
SUBMISSIONS = 2000
# Submissions in flight: a create is followed by the save of the one this many before it.
IN_FLIGHT = 8
DOCUMENT = json.dumps({"job_id": "x" * 20, "state": "SUBMITTING", "partner_params": {}, "padding": "y" * 600})


def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def writes_in_order():
    """Creates and saves interleaved as concurrent submissions make them."""
    order = []
    for index in range(SUBMISSIONS):
        order.append(("create", index))
        if index >= IN_FLIGHT:
            order.append(("save", index - IN_FLIGHT))
    order.extend(("save", index) for index in range(SUBMISSIONS - IN_FLIGHT, SUBMISSIONS))
    return order


def write(db, kind, index):
    job_id, user_id, at = f"job-{index}", f"user-{index % 50}", 1_700_000_000_000 + index
    if kind == "create":
        db.execute(
            "INSERT INTO jobs (job_id, user_id, state, kind, owner, data, version, last_sequence, next_poll_at,"
            " created_at, updated_at) SELECT ?, ?, 'SUBMITTING', 'AUTHENTICATION', 'caller', ?, 1, 1, NULL, ?, ?"
            " WHERE NOT EXISTS (SELECT 1 FROM users WHERE user_id = ? AND refuses_jobs = 1)"
            " ON CONFLICT (job_id) DO NOTHING",
            (job_id, user_id, DOCUMENT, at, at, user_id),
        )
        sequence, event = 1, "CREATED"
    else:
        db.execute(
            "UPDATE jobs SET state = 'SUBMITTED', data = ?, version = 2, last_sequence = 2, next_poll_at = ?,"
            " updated_at = ? WHERE job_id = ? AND version = 1",
            (DOCUMENT, at + 100_000, at + 500, job_id),
        )
        sequence, event = 2, "SUBMITTED"
    db.execute(
        "INSERT INTO job_events (job_id, user_id, owner, sequence, kind, snapshot, created_at)"
        " VALUES (?, ?, 'caller', ?, ?, ?, ?)",
        (job_id, user_id, sequence, event, DOCUMENT, at),
    )


def run(per_commit, directory):
    path = os.path.join(directory, f"commits-{per_commit}.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for migration in sorted(glob.glob(os.path.join(MIGRATIONS, "*.sql"))):
        with open(migration, encoding="utf-8") as file:
            db.executescript(file.read())
    db.execute("PRAGMA synchronous=FULL")
    order = writes_in_order()
    (user, system), started = cpu(), time.perf_counter()
    for first in range(0, len(order), per_commit):
        db.execute("BEGIN IMMEDIATE")
        for kind, index in order[first : first + per_commit]:
            write(db, kind, index)
        db.execute("COMMIT")
    (user_after, system_after), wall = cpu(), time.perf_counter() - started
    db.close()
    per = 1e3 / SUBMISSIONS
    print(
        f"{per_commit:>14} {(user_after - user) * per:>9.3f} {(system_after - system) * per:>11.3f}"
        f" {wall * per:>9.3f}"
    )


def main():
    print(f"SQLite {sqlite3.sqlite_version}, {SUBMISSIONS} submissions; ms a submission")
    print("writes a commit  user CPU  system CPU      wall")
    with tempfile.TemporaryDirectory() as directory:
        for per_commit in (1, 2, 4, 8):
            run(per_commit, directory)


if __name__ == "__main__":
    main()
