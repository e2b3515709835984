"""The portal's FastAPI application: upload page, study API, reports.

Endpoints (OpenAPI at ``/docs``):

- ``GET /`` the upload page; ``GET /static/...`` its script and style.
- ``GET /api/health`` service state and loaded tasks (no token needed; no job data).
- ``GET /api/tasks`` the tasks (bundles) this service scores.
- ``POST /api/studies`` multipart ``files`` (one or more) + optional ``task`` → ``202`` with the job id.
- ``GET /api/studies/{id}[?wait=S]`` status, progress steps, findings and probabilities once scored; ``wait``
  long-polls until the status or step changes (at most S seconds).
- ``GET /api/studies/{id}/report`` the HTML report, ``/report.pdf`` the PDF (the ``cadpipe score`` report).
- ``GET /api/studies/{id}/overlays/{n}.png`` the overlay images.

When the service has a token, every route but ``/api/health`` needs it: ``Authorization: Bearer <token>``, a
``token`` query parameter, or the session cookie the page gets when opened with ``?token=`` — checked before an
upload's body is read; security headers and the Host check: :mod:`cadpipe.pipelines.portal.security`. An upload
whose image declares more pixels than the limit (:mod:`cadpipe.transforms.readers.limits`) is refused with ``422``. Errors are JSON ``{"error": "<file>: <reason>",
"file": ..., "reason": ...}`` with a 4xx/5xx status; the service stays up.
"""


import hmac
import html
import logging
import os
import shutil
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.portal.jobs import STEPS, JobStore, is_job_id, new_job_id
from cadpipe.pipelines.portal.security import SecurityGate, install_spool_dir
from cadpipe.pipelines.portal.uploads import (ACCEPTED_SUFFIXES, UploadLimits, UploadRejected, check_upload_set,
                                              ljpeg_stored_names, store_upload, suffix_of)
from cadpipe.pipelines.portal.worker import QueueFull, Worker

__all__ = ["PortalSettings", "create_app"]

log = logging.getLogger("cadpipe.portal")
access_log = logging.getLogger("cadpipe.portal.access")


@dataclass
class PortalSettings:
    data_dir: str
    token: str | None = None
    limits: UploadLimits = field(default_factory=UploadLimits)
    queue_size: int = 16
    allowed_hosts: list[str] | None = None  # Host header values served (None: any; cadpipe serve always sets it)


def _swagger_ui_dir() -> str | None:
    """Swagger UI's static files from the ``swagger-ui-bundle`` package, or None (FastAPI then links its CDN)."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return swagger_ui_bundle.swagger_ui_path

def _error(status: int, message: str, file: str = "", reason: str = ""):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, "file": file, "reason": reason or message}, status_code=status)


def _task_info(key: str, runner) -> dict:
    from cadpipe.pipelines.portal.engine import task_hint

    return {"key": key, "label": runner.metadata.get("name") or key, "task": runner.task,
            "kind": task_hint(key), "class_names": runner.class_names, "version": runner.version}


def _page(tasks: list[dict], settings: PortalSettings) -> str:
    template = resources.files("cadpipe.pipelines.portal").joinpath("templates", "portal.html").read_text("utf-8")
    options = "\n".join(f'<option value="{html.escape(t["key"])}" data-kind="{html.escape(t["kind"] or "")}">'
                        f'{html.escape(t["label"])}</option>' for t in tasks)
    accept = ",".join(sorted(s for s in ACCEPTED_SUFFIXES if s))
    lim = settings.limits
    return (template.replace("{{TASK_OPTIONS}}", options)
            .replace("{{ACCEPT}}", accept)
            .replace("{{MAX_FILES}}", str(lim.max_files))
            .replace("{{MAX_FILE_MB}}", f"{lim.max_file_mb:g}")
            .replace("{{MAX_TOTAL_MB}}", f"{lim.max_total_mb:g}")
            .replace("{{TOKEN_REQUIRED}}", "true" if settings.token else "false"))


class BodyLimit:
    """ASGI middleware: a POST to ``path`` whose body exceeds ``limit`` bytes gets ``413``: refused from its
    ``Content-Length`` before any byte is read, else (chunked uploads) as soon as the streamed body passes the limit
    (the rest of the app's response is replaced)."""

    def __init__(self, app, path: str, limit: int, message: str):
        self.app, self.path, self.limit, self.message = app, path, limit, message

    async def _reply(self, send) -> None:
        import json

        body = json.dumps({"error": self.message, "file": "", "reason": self.message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            access_log.info("POST %s 413 (Content-Length)", self.path)
            return await self._reply(send)
        state = {"received": 0, "over": False, "replied": False}

        async def limited_receive():
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not state["over"]:
                return await send(message)
            if not state["replied"]:
                state["replied"] = True
                access_log.info("POST %s 413 (streamed body)", self.path)
                await self._reply(send)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
            if not state["replied"]:
                state["replied"] = True
                await self._reply(send)


def check_declared_sizes(stored: list) -> None:
    """Refuse (``422``) an upload whose image declares more pixels than the limit, or a ``.dcm`` that is not DICOM,
    from the headers alone (:func:`cadpipe.transforms.readers.limits.check_declared_size`)."""
    from cadpipe.transforms.readers.limits import check_declared_size

    for s in stored:
        if s.kind in ("image", "dicom", "nifti", "ljpeg"):
            try:
                check_declared_size(s.stored, s.kind)
            except CadpipeInputError as err:
                raise UploadRejected(s.original, err.reason, 422) from err


def create_app(runners: dict, settings: PortalSettings):
    """The FastAPI app scoring uploads with ``runners`` (``{task key: BundleRunner}``, loaded once by the caller).

    The worker thread starts and stops with the app's lifespan (``with TestClient(app)`` or uvicorn).
    """
    from fastapi import FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.responses import FileResponse, HTMLResponse
    from fastapi.staticfiles import StaticFiles

    from cadpipe.pipelines.scoring.log_privacy import quiet_identifying_logs

    quiet_identifying_logs()  # no header value (pydicom's warnings quote them) in the server log
    store = JobStore(settings.data_dir)
    worker = Worker(store, runners, settings.queue_size)
    tasks = [_task_info(k, r) for k, r in runners.items()]
    labels = {t["key"]: t["label"] for t in tasks}

    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    swagger_dir = _swagger_ui_dir()
    app = FastAPI(title="cadpipe portal", version="1", lifespan=lifespan,
                  docs_url=None if swagger_dir else "/docs",
                  description="Upload a study, get the cadpipe report. Research software, not for clinical use.")
    if swagger_dir:  # serve Swagger UI's files ourselves: /docs works with no internet
        from fastapi.openapi.docs import get_swagger_ui_html

        app.mount("/swagger", StaticFiles(directory=swagger_dir), name="swagger")

        @app.get("/docs", include_in_schema=False)
        def docs():
            return get_swagger_ui_html(openapi_url=app.openapi_url, title="cadpipe portal - API",
                                       swagger_js_url="/swagger/swagger-ui-bundle.js",
                                       swagger_css_url="/swagger/swagger-ui.css",
                                       swagger_favicon_url="/swagger/favicon-32x32.png")
    app.state.store, app.state.worker, app.state.settings = store, worker, settings
    static_dir = str(resources.files("cadpipe.pipelines.portal").joinpath("static"))
    app.mount("/static", StaticFiles(directory=static_dir), name="static")
    slack = 1 << 20  # multipart framing around the files

    @app.middleware("http")
    async def access(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        # the path only: query strings may carry the token; job ids are random
        access_log.info("%s %s %d %.3fs", request.method, request.url.path, response.status_code,
                        time.perf_counter() - t0)
        return response

    app.add_middleware(BodyLimit, path="/api/studies", limit=settings.limits.max_total_bytes + slack,
                       message=f"upload is larger than the limit of {settings.limits.max_total_mb:g} MB in total")
    # outermost: Host and token checked before anything else runs or any body is read; uploads spool into data_dir
    install_spool_dir()
    app.add_middleware(SecurityGate, token=settings.token, allowed_hosts=settings.allowed_hosts,
                       spool_dir=settings.data_dir)

    def authorised(request: Request) -> bool:  # the gate checked already; kept per route as a second lock
        if not settings.token:
            return True
        if SecurityGate.cookie_ok(request.headers.get("cookie", ""), settings.token):
            return True
        given = [request.query_params.get("token", "")]
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        return any(g and hmac.compare_digest(g.encode(), settings.token.encode()) for g in given)

    def unauthorised():
        r = _error(401, "a valid access token is required (Authorization: Bearer <token>)")
        r.headers["WWW-Authenticate"] = "Bearer"
        return r

    def job_or_error(request: Request, job_id: str):
        if not authorised(request):
            return None, unauthorised()
        job = store.get(job_id) if is_job_id(job_id) else None
        if job is None:
            return None, _error(404, f"no study with id {job_id[:40]!r}")
        return job, None

    def public(job: dict) -> dict:
        base = f"/api/studies/{job['id']}"
        reached = STEPS.index(job["step"]) if job["step"] in STEPS else 0
        result = job["result"] or {}
        done = job["status"] == "done"
        return {
            "id": job["id"], "status": job["status"], "step": job["step"],
            "steps": [{"name": s, "done": i <= reached and (i < len(STEPS) - 1 or done)} for i, s in enumerate(STEPS)],
            "task": job["task"], "task_label": labels.get(job["task"], job["task"]),
            "files": [{"name": f["name"], "size": f["size"], "kind": f["kind"]} for f in job["files"]],
            "error": job["error"] or None,
            "created": job["created"], "finished": job["finished"],
            "elapsed_s": round(job["finished"] - job["created"], 3) if job["finished"] else None,
            "rows": result.get("rows", []),
            "step_times": result.get("step_times", {}),
            "report_url": f"{base}/report" if result.get("report_html") else None,
            "report_pdf_url": f"{base}/report.pdf" if result.get("report_pdf") else None,
            "overlay_urls": [f"{base}/overlays/{i}.png" for i in range(len(result.get("overlays", [])))],
            "overlay_captions": result.get("overlay_captions", []),
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return HTMLResponse(_page(tasks, settings), headers={"Cache-Control": "no-store"})

    @app.get("/api/health", summary="service state")
    def health():
        return {"status": "ok", "tasks": [t["key"] for t in tasks], "queue": worker.queue.qsize(),
                "queue_size": worker.queue.maxsize, "token_required": bool(settings.token),
                "limits": {"max_files": settings.limits.max_files, "max_file_mb": settings.limits.max_file_mb,
                           "max_total_mb": settings.limits.max_total_mb}}

    @app.get("/api/tasks", summary="the tasks (bundles) this service scores")
    def list_tasks():
        return tasks

    @app.post("/api/studies", status_code=202, summary="upload one study (one or more files) for scoring")
    def upload(request: Request, files: list[UploadFile] = File(..., description="DICOM, LJPEG + .ics, NIfTI, "
                                                                                  "JPEG/PNG/TIFF"),
               key: str = Form("auto", alias="task", description="a task key from /api/tasks, or 'auto' to infer "
                                                                  "it")):
        if not authorised(request):
            return unauthorised()
        names = [f.filename or "" for f in files]
        job_id = new_job_id()
        job_dir = store.job_dir(job_id)
        try:
            check_upload_set(names, settings.limits)
            auto = key in ("", "auto")  # the form's "task": a bundle key (which bundle scores), not a task kind
            if not auto and key not in runners:
                raise UploadRejected("", f"unknown task {key!r}; choose one of {', '.join(runners)}", 400)
            in_dir = os.path.join(job_dir, "input")
            ljpegs = [n for n in names if suffix_of(n) == ".ljpeg"]
            ics_name = None
            if ljpegs:
                ics_name = ljpeg_stored_names(ljpegs[0])[1]
            stored, total = [], 0
            for i, f in enumerate(files):
                s = store_upload(names[i], f.file, in_dir, i, settings.limits, total, ics_name)
                total += s.size
                stored.append(s)
            check_declared_sizes(stored)
            if auto:
                from cadpipe.pipelines.portal.engine import infer_task

                key = infer_task(stored, list(runners))
                if key is None:
                    raise UploadRejected(names[0], "cannot tell the task from this file; choose one of "
                                                   + ", ".join(labels.values()), 400)
        except UploadRejected as err:
            shutil.rmtree(job_dir, ignore_errors=True)
            return _error(err.status, str(err), err.path, err.reason)
        finally:
            for f in files:
                f.file.close()
        record = [{"name": s.original, "stored": os.path.relpath(s.stored, job_dir), "kind": s.kind, "size": s.size}
                  for s in stored]
        job = store.create(job_id, key, record)
        try:
            worker.submit(job_id)
        except QueueFull as err:
            store.update(job_id, status="error", error=f"the service is busy: {err}", finished=time.time())
            shutil.rmtree(os.path.join(job_dir, "input"), ignore_errors=True)
            r = _error(503, f"the service is busy: {err}")
            r.headers["Retry-After"] = "30"
            return r
        log.info("job %s (%s): queued, %d file(s), %d bytes", job_id, key, len(stored), total)
        body = public(job)
        body["status_url"] = f"/api/studies/{job_id}"
        return body

    @app.get("/api/studies/{job_id}", summary="status, progress steps and results of one study")
    def status(job_id: str, request: Request,
               wait: float = Query(0.0, ge=0.0, le=30.0, description="long poll: answer when the status or step "
                                                                     "changes, or after this many seconds")):
        job, err = job_or_error(request, job_id)
        if err:
            return err
        if wait > 0 and job["status"] in ("queued", "running"):
            job = worker.wait_for_change(job["id"], wait) or job
        return public(job)

    def result_file(request: Request, job_id: str, key: str, media: str):
        job, err = job_or_error(request, job_id)
        if err:
            return err
        rel = (job["result"] or {}).get(key)
        if not rel:
            return _error(409 if job["status"] in ("queued", "running") else 404,
                          f"the report is not available (status {job['status']})")
        path = os.path.join(store.job_dir(job["id"]), rel)
        if not os.path.isfile(path):
            return _error(404, "the report file is missing from the data folder")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-store"},
                            filename=None if media == "text/html" else f"cadpipe_report_{job['id'][:8]}.pdf")

    @app.get("/api/studies/{job_id}/report", response_class=HTMLResponse, summary="the HTML report")
    def report(job_id: str, request: Request):
        return result_file(request, job_id, "report_html", "text/html")

    @app.get("/api/studies/{job_id}/report.pdf", summary="the PDF report",
             responses={200: {"content": {"application/pdf": {}}}})
    def report_pdf(job_id: str, request: Request):
        return result_file(request, job_id, "report_pdf", "application/pdf")

    @app.get("/api/studies/{job_id}/overlays/{index}.png", summary="an overlay image of the report",
             responses={200: {"content": {"image/png": {}}}})
    def overlay(job_id: str, index: int, request: Request):
        job, err = job_or_error(request, job_id)
        if err:
            return err
        overlays = (job["result"] or {}).get("overlays", [])
        if not 0 <= index < len(overlays):
            return _error(404, f"no overlay {index}")
        path = os.path.join(store.job_dir(job["id"]), overlays[index])
        if not os.path.isfile(path):
            return _error(404, "the overlay file is missing from the data folder")
        return FileResponse(path, media_type="image/png")

    return app
