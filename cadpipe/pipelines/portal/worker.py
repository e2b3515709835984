"""The portal's worker: a bounded queue of job ids and one thread that scores them, off the request thread.

One thread per service by default: the bundles' networks are shared (Grad-CAM is thread safe, but concurrent
jobs would only compete for the same cores); the queue makes concurrent uploads wait their turn.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.findings import row_calls
from cadpipe.pipelines.portal.jobs import STEPS, JobStore

__all__ = ["Worker", "QueueFull"]

log = logging.getLogger("cadpipe.portal")


class QueueFull(RuntimeError):
    """The job queue is at its limit: the upload should be retried later (HTTP 503)."""


class Worker:
    """Scores queued jobs with the loaded runners (``{task: BundleRunner}``)."""

    def __init__(self, store: JobStore, runners: dict, queue_size: int = 16):
        self.store, self.runners = store, runners
        self.queue: queue.Queue[str | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self.changed = threading.Condition()  # notified after every job update (long-polling status requests)

    def _update(self, job_id: str, **fields) -> None:
        self.store.update(job_id, **fields)
        with self.changed:
            self.changed.notify_all()

    def wait_for_change(self, job_id: str, timeout: float) -> dict | None:
        """The job once its status or step differs from now, or after ``timeout`` seconds, or at once when it is
        finished."""
        deadline = time.monotonic() + timeout
        with self.changed:
            job = self.store.get(job_id)
            key = job and (job["status"], job["step"])
            while job is not None and job["status"] in ("queued", "running"):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
                job = self.store.get(job_id)
                if (job["status"], job["step"]) != key:
                    break
        return job

    def start(self) -> None:
        if self._thread is None:
            for job_id in self.store.unfinished():  # left by a stopped service: score them now
                try:
                    self.queue.put_nowait(job_id)
                    self.store.update(job_id, status="queued", step="uploaded")
                except queue.Full:
                    self.store.update(job_id, status="error", error="the service restarted with a full queue; "
                                                                    "upload the files again")
            self._thread = threading.Thread(target=self._loop, name="cadpipe-portal-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is not None:
            self.queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job_id: str) -> None:
        try:
            self.queue.put_nowait(job_id)
        except queue.Full as err:
            raise QueueFull(f"{self.queue.maxsize} jobs are waiting; try again in a minute") from err

    def _loop(self) -> None:
        while True:
            job_id = self.queue.get()
            if job_id is None:
                return
            try:
                self.run_job(job_id)
            except Exception as err:  # noqa: BLE001 - the worker must survive any job
                log.error("job %s failed: %s", job_id, type(err).__name__)
                self._update(job_id, status="error", error=f"internal error ({type(err).__name__})",
                             finished=time.time())

    def run_job(self, job_id: str) -> None:
        """Score one job and record the result (no identifiers are logged: only the job id, task and timing)."""
        from cadpipe.pipelines.scoring.discovery import discover
        from cadpipe.pipelines.portal.engine import score_job, with_uploaded_names

        job = self.store.get(job_id)
        if job is None:
            return
        runner = self.runners.get(job["task"])
        if runner is None:
            self._update(job_id, status="error", error=f"task {job['task']!r} is not loaded in this service",
                         finished=time.time())
            return
        job_dir = self.store.job_dir(job_id)
        in_dir, out_dir = os.path.join(job_dir, "input"), os.path.join(job_dir, "out")
        t0 = time.time()
        self._update(job_id, status="running", started=t0)
        reached = {"i": 0}
        step_times = {"uploaded": round(t0 - job["created"], 3)}  # seconds since the upload was received

        def on_step(step: str) -> None:
            i = STEPS.index(step)
            if i > reached["i"]:
                reached["i"] = i
                step_times[step] = round(time.time() - job["created"], 3)
                self._update(job_id, step=step)

        names = {os.path.join(job_dir, f["stored"]): f["name"] for f in job["files"]}
        try:
            units = discover(in_dir, runner.spatial_dims, os.path.join(job_dir, "series"))
            if not units:
                raise CadpipeInputError(", ".join(f["name"] for f in job["files"]), "no image found in the upload")
            result = score_job(runner, units, out_dir, on_step, display_names=names,
                               study_label=f"upload {job_id[:8]}")
        except CadpipeInputError as err:
            self._update(job_id, status="error", error=with_uploaded_names(str(err), names), finished=time.time())
            log.info("job %s (%s): error after %.2f s", job_id, job["task"], time.time() - t0)
            return
        rows = result["rows"]
        ok = [r for r in rows if r["status"] == "ok"]
        public = [_public_row(r) for r in rows]
        errors = "; ".join(r["error"] for r in rows if r["status"] != "ok")
        summary = {
            "rows": public, "seconds": round(result["seconds"], 3),
            "report_html": os.path.relpath(result["report_html"], job_dir) if result["report_html"] else None,
            "report_pdf": os.path.relpath(result["report_pdf"], job_dir) if result["report_pdf"] else None,
            "overlays": [os.path.join("out", p) for r in ok for p in r.get("_outputs", {}).get("overlays", [])],
            "overlay_captions": [_caption(r, i) for r in ok for i, _ in enumerate(r.get("_outputs", {}).get("overlays", []))],
        }
        step_times["report ready"] = round(time.time() - job["created"], 3)
        summary["step_times"] = step_times
        if ok:
            self._update(job_id, status="done", step="report ready", result=summary, error=errors,
                         finished=time.time())
        else:
            self._update(job_id, status="error", result=summary, error=errors or "nothing could be scored",
                         finished=time.time())
        log.info("job %s (%s): %s, %d/%d units ok in %.2f s", job_id, job["task"], "done" if ok else "error",
                 len(ok), len(rows), time.time() - t0)


def _caption(row: dict, index: int) -> str:
    """What overlay ``index`` of a row shows (scoring's ``_captions``), "" when not said."""
    captions = row.get("_captions") or []
    return str(captions[index]) if index < len(captions) else ""


def _public_row(row: dict) -> dict:
    """A results row for the API: probabilities/findings, no server paths."""
    keep = {k: v for k, v in row.items() if not k.startswith("_") and k not in ("model_sha256",)}
    keep["findings"] = row.get("_findings", [])
    keep["calls"] = row_calls(row)  # what the page's table prints: the report's calls and numbers
    return keep
