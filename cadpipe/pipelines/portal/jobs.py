"""The portal's job store: one SQLite table under the data folder, safe to use from several threads.

A job is one upload (one or more files scored together into one report). Its ``step`` moves through
:data:`STEPS`; ``status`` is ``queued`` → ``running`` → ``done`` | ``error``. Finished jobs (their row and their
report files under ``<data_dir>/jobs/<id>/``) survive a restart; jobs left ``queued``/``running`` by a stopped
service are handed back to the queue at start-up (:meth:`JobStore.unfinished`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid

from cadpipe.pipelines.outputs.private_files import make_private_dirs, open_private

__all__ = ["JobStore", "STEPS", "new_job_id", "is_job_id"]

STEPS = ("uploaded", "loaded", "preprocessed", "inferred", "report ready")
_COLUMNS = ("id", "created", "updated", "status", "step", "task", "files", "error", "result", "started", "finished")


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


class JobStore:
    """Jobs in ``<data_dir>/jobs.sqlite3``. Every method opens its own short connection (thread safe)."""

    def __init__(self, data_dir: str):
        self.data_dir = os.path.abspath(data_dir)
        # uploads, reports and the job database are patient data: 0700 folders, 0600 files (docs/security.md)
        make_private_dirs(os.path.join(self.data_dir, "jobs"), under=self.data_dir)
        self.path = os.path.join(self.data_dir, "jobs.sqlite3")
        self._lock = threading.Lock()
        if not os.path.exists(self.path):
            with open_private(self.path, "ab"):  # SQLite gives its -wal/-shm files the database's mode
                pass
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created REAL, updated REAL, status TEXT, "
                "step TEXT, task TEXT, files TEXT, error TEXT, result TEXT, started REAL, finished REAL)"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def job_dir(self, job_id: str) -> str:
        return os.path.join(self.data_dir, "jobs", job_id)

    def create(self, job_id: str, task: str, files: list[dict]) -> dict:
        now = time.time()
        with self._lock, self._connect() as db:
            db.execute("INSERT INTO jobs (id, created, updated, status, step, task, files, error, result) "
                       "VALUES (?, ?, ?, 'queued', 'uploaded', ?, ?, '', '{}')",
                       (job_id, now, now, task, json.dumps(files)))
        return self.get(job_id)

    def update(self, job_id: str, **fields) -> None:
        fields["updated"] = time.time()
        for key in ("files", "result"):
            if key in fields and not isinstance(fields[key], str):
                fields[key] = json.dumps(fields[key])
        bad = set(fields) - set(_COLUMNS)
        if bad:
            raise KeyError(f"unknown job fields {sorted(bad)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock, self._connect() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def get(self, job_id: str) -> dict | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = dict(row)
        job["files"] = json.loads(job["files"] or "[]")
        job["result"] = json.loads(job["result"] or "{}")
        return job

    def unfinished(self) -> list[str]:
        """Ids of jobs a previous run left queued or running, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT id FROM jobs WHERE status IN ('queued', 'running') ORDER BY created").fetchall()
        return [r["id"] for r in rows]

    def counts(self) -> dict:
        with self._connect() as db:
            rows = db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {r["status"]: r["n"] for r in rows}
