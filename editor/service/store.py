"""The service's job store: one SQLite file (WAL) under the service home.

SQLite because a job store needs transactions and durability but no server of its own: every
state change is one committed transaction, so a SIGKILLed service restarts with every job and
every event it had acknowledged. WAL lets the API read while the scheduler writes. Each call opens
its own connection (cheap), so FastAPI's worker threads and the scheduler thread never share one.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
DONE = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    spec TEXT NOT NULL,            -- the validated request, JSON
    state TEXT NOT NULL,
    step TEXT,                     -- current step name
    done_steps INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,                    -- one line, for failed jobs
    worker TEXT,                   -- pid (local) or task id (ray) of the current attempt
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    activity TEXT                  -- what the current step is doing: the last progress event, "label: n/total unit"
);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs(user, created);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created);
CREATE TABLE IF NOT EXISTS events (
    job TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job, seq)
);
"""


@dataclass
class Job:
    id: str
    user: str
    spec: dict
    state: str
    step: str | None
    done_steps: int
    total_steps: int | None
    created: float
    started: float | None
    finished: float | None
    error: str | None
    worker: str | None
    attempts: int
    cancel: bool
    activity: str | None = None

    def public(self) -> dict:
        """What a user sees of their job."""
        progress = (self.done_steps / self.total_steps) if self.total_steps else (1.0 if self.state == "succeeded" else 0.0)
        end = self.finished or (time.time() if self.started else None)
        return {"id": self.id, "state": self.state, "spec": self.spec, "step": self.step,
                "steps_done": self.done_steps, "steps_total": self.total_steps, "progress": round(progress, 4),
                "created": self.created, "started": self.started, "finished": self.finished,
                "seconds": round(end - self.started, 1) if self.started and end else None,
                "error": self.error, "attempts": self.attempts, "activity": self.activity}


class JobStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once for the file
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            if "activity" not in columns:  # a store written before jobs reported their activity
                db.execute("ALTER TABLE jobs ADD COLUMN activity TEXT")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection (opened once per thread: opening one per request costs more than
        the query). Autocommit mode: every write below is one explicit transaction."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA synchronous=FULL")  # a job the API acknowledged survives a power cut
            db.row_factory = sqlite3.Row
            self._local.db = db
        yield db

    @staticmethod
    def _job(row: sqlite3.Row | None) -> Job | None:
        if row is None:
            return None
        data = dict(row)
        data["spec"] = json.loads(data["spec"])
        data["cancel"] = bool(data["cancel"])
        return Job(**data)

    def create(self, user: str, spec: dict, max_queued: int, max_queued_per_user: int) -> tuple[str | None, str]:
        """Queue a job, or say why not ("full" / "user"): one transaction, so two requests never both
        take the last place in the queue."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
                mine = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND user = ?", (user,)).fetchone()[0]
                if queued >= max_queued:
                    db.execute("ROLLBACK")
                    return None, "full"
                if mine >= max_queued_per_user:
                    db.execute("ROLLBACK")
                    return None, "user"
                job_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4)
                now = time.time()
                db.execute("INSERT INTO jobs (id, user, spec, state, created) VALUES (?, ?, ?, 'queued', ?)",
                           (job_id, user, json.dumps(spec), now))
                self._event(db, job_id, "state", {"state": "queued"}, now)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return job_id, "ok"

    def get(self, job_id: str, user: str | None = None) -> Job | None:
        """The job, or None when it does not exist or (``user`` given) belongs to someone else."""
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        job = self._job(row)
        return None if job is None or (user is not None and job.user != user) else job

    def list(self, user: str) -> list[Job]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM jobs WHERE user = ? ORDER BY created DESC", (user,)).fetchall()
        return [self._job(r) for r in rows]

    def by_state(self, state: str) -> list[Job]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY created", (state,)).fetchall()
        return [self._job(r) for r in rows]

    def update(self, job_id: str, event: tuple[str, dict] | None = None, **fields) -> None:
        """Change fields and, in the same transaction, record an event."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            if fields:
                sets = ", ".join(f"{k} = ?" for k in fields)
                db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))  # noqa: S608 - our keys
            if event:
                self._event(db, job_id, event[0], event[1], time.time())
            db.execute("COMMIT")

    def cancel(self, job_id: str, user: str) -> Job | None:
        """Cancel ``user``'s job: a queued one at once, a running one by the scheduler (it stops the
        worker); None if the user has no such job."""
        job = self.get(job_id, user)
        if job is None or job.state in DONE:
            return job
        if job.state == "queued":
            self.update(job_id, ("state", {"state": "cancelled"}), state="cancelled", cancel=1, finished=time.time())
        else:
            self.update(job_id, ("log", {"line": "cancel requested"}), cancel=1)
        return self.get(job_id)

    def claim(self, job_id: str, worker: str) -> bool:
        """queued -> running, only if still queued (a cancel may have come first)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT state, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] != "queued":
                db.execute("ROLLBACK")
                return False
            now = time.time()
            db.execute("UPDATE jobs SET state = 'running', started = COALESCE(started, ?), worker = ?, attempts = ? "
                       "WHERE id = ?", (now, worker, row["attempts"] + 1, job_id))
            self._event(db, job_id, "state", {"state": "running", "attempt": row["attempts"] + 1}, now)
            db.execute("COMMIT")
        return True

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: str, kind: str, data: dict, now: float) -> None:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job = ?", (job_id,)).fetchone()[0]
        db.execute("INSERT INTO events (job, seq, time, type, data) VALUES (?, ?, ?, ?, ?)",
                   (job_id, seq, now, kind, json.dumps(data)))

    def events(self, job_id: str, after: int = 0) -> list[dict]:
        with self._db() as db:
            rows = db.execute("SELECT seq, time, type, data FROM events WHERE job = ? AND seq > ? ORDER BY seq",
                              (job_id, after)).fetchall()
        return [{"seq": r["seq"], "time": r["time"], "type": r["type"], "data": json.loads(r["data"])} for r in rows]
