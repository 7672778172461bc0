"""Inference jobs: submit (an upload, or a folder under an allowed root), list, status,
results with detections, the input images, resume, cancel."""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from evc import db as evcdb
from evc.api import uploads
from evc.api.auth import OPERATOR, VIEWER, Caller
from evc.api.routes import common
from evc.errors import UsageError
from evc.infer import jobs, runner
from evc.run.capabilities import job_outcome

router = APIRouter(tags=["jobs"], responses=common.ERRORS)
JOB = PathParam(..., pattern=common.NAME, description="Job id.")
CHUNK = 1 << 16


def _run_job(request: Request, caller: Caller, job_id: str, params: dict, wait: float,
             target: str | None = None) -> dict:  # fmt: skip
    """Run (or resume) a created job in the worker; cancellable."""
    ws = common.workspace(request)
    return common.start(
        request, caller, "infer.run", {**params, "job": job_id},
        lambda progress, stop: job_outcome(
            runner.resume(ws, job_id, target=target, progress=progress, stop=stop)
        ),
        ref=job_id, cancellable=True, wait=wait,
    ) | {"job": job_id}  # fmt: skip


def _allowed(request: Request, data: Path) -> Path:
    """``data`` resolved (links followed) inside one of the server's ``--data-root``s;
    a relative path is taken from each root in turn."""
    roots = [r.resolve() for r in request.app.state.settings.data_roots]
    if not roots:
        raise HTTPException(
            403, "This server takes no server-side folders: upload the data "
            "(/api/jobs/upload), or start `evc serve` with --data-root DIR.",
        )  # fmt: skip
    for candidate in [data] if data.is_absolute() else [r / data for r in roots]:
        real = candidate.resolve()
        if any(real.is_relative_to(r) for r in roots) and real.exists():
            return real
    raise HTTPException(
        403, f"{str(data)[:200]!r} is not a file or folder under an allowed data root "
        f"({', '.join(map(str, roots))}).",
    )  # fmt: skip


@router.get("/api/jobs", response_model=common.Page)
def list_jobs(
    request: Request,
    limit: int = common.LIMIT,
    offset: int = common.OFFSET,
    state: str | None = Query(None, pattern="^(running|interrupted|complete)$"),
    caller=VIEWER,
) -> dict:
    """Jobs, newest first; a running one names who runs it (``holder``: none means its
    runner is gone and the job is resumable)."""
    ws = common.workspace(request)
    page = jobs.page(ws, limit, offset, state)
    for job in page["items"]:
        job["holder"] = jobs.holder(ws, job["id"]) if job["state"] == "running" else None
    return page


@router.post("/api/jobs", response_model=common.Accepted, status_code=202)
def submit(
    request: Request, options: runner.RunOptions, wait: float = common.WAIT, caller=OPERATOR
) -> dict:
    """Run a model over a folder, archive or video on the server, under one of its
    ``--data-root`` folders. Answers with the job's id once its items are staged."""
    params = options.model_dump(mode="json")
    common.audit(request, params)
    options = options.model_copy(update={"data": _allowed(request, options.data)})
    job_id = runner.create(common.workspace(request), options)
    return _run_job(request, caller, job_id, params, wait)


@router.post(
    "/api/jobs/upload",
    response_model=common.Accepted,
    status_code=202,
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["options", "files"], "properties": {
            "options": {"type": "string", "description":
                        "JSON object: the fields of POST /api/jobs but data."},
            "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "Images, or one .zip/.tar/.tar.gz/.tgz, or one video."},
        }}}}}},
)  # fmt: skip
async def submit_upload(request: Request, wait: float = common.WAIT, caller=OPERATOR) -> dict:
    """Upload the data and run a model over it. The body is streamed to disk under the
    server's ``--max-upload``; an archive is then held to the same caps as ``--data``."""
    settings = request.app.state.settings
    ws = common.workspace(request)
    upload = await uploads.receive(request, ws, settings.max_upload)
    try:
        upload.check_kinds()
        try:
            fields = json.loads(upload.fields.get("options") or "{}")
        except ValueError:
            raise HTTPException(400, "Form field 'options' is not JSON.") from None
        if not isinstance(fields, dict) or "data" in fields:
            raise HTTPException(400, "Form field 'options' is a JSON object without 'data'.")
        try:
            options = runner.RunOptions.model_validate({**fields, "data": str(upload.data)})
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        params = {**options.model_dump(mode="json"), "data": None, "bytes": upload.size,
                  "files": [f.name for f in upload.files[:20]]}  # fmt: skip
        common.audit(request, params)
        job_id = await run_in_threadpool(runner.create, ws, options)
    except BaseException:
        upload.discard()
        raise
    if upload.data != upload.folder:  # an archive or video: extracted into the job's folder
        upload.discard()
    return await run_in_threadpool(_run_job, request, caller, job_id, params, wait)


@router.get("/api/jobs/{job_id}")
def job_status(request: Request, job_id: str = JOB, caller=VIEWER) -> dict:
    """A job: state, counts, progress (items done, per node), throughput per node,
    the nodes skipped, who runs it now, and its first errors."""
    ws = common.workspace(request)
    result = common.found(jobs.status, ws, job_id)
    progress = jobs.progress(evcdb.workspace_db(ws), result.job)
    errors = jobs.results_page(ws, job_id, 50, 0, state="error")["items"]
    return {**result.to_dict(), "progress": progress, "holder": jobs.holder(ws, job_id),
            "errors": [{k: e[k] for k in ("item", "node", "error")} for e in errors]}  # fmt: skip


@router.get("/api/jobs/{job_id}/results", response_model=common.Page)
def job_results(
    request: Request,
    job_id: str = JOB,
    limit: int = common.LIMIT,
    offset: int = common.OFFSET,
    state: str | None = Query(None, pattern="^(pending|ok|error)$"),
    label: str | None = Query(None, max_length=256),
    min_score: float | None = Query(None, ge=0, le=1),
    caller=VIEWER,
) -> dict:
    """A page of the job's items by name with their detections (label, score, box in
    pixels: x, y, w, h); with ``label``/``min_score`` only the items and detections
    that match."""
    ws = common.workspace(request)
    return common.found(
        jobs.results_page, ws, job_id, limit, offset, state=state, label=label,
        min_score=min_score,
    )  # fmt: skip


@router.get("/api/jobs/{job_id}/labels")
def job_labels(request: Request, job_id: str = JOB, caller=VIEWER) -> dict:
    """The labels the job found, with counts and the best score of each."""
    return {"items": common.found(jobs.labels, common.workspace(request), job_id)}


@router.get(
    "/api/jobs/{job_id}/image",
    response_class=StreamingResponse,
    responses={200: {"content": {"image/*": {}}, "description": "The item's image."}},
)
def job_image(
    request: Request,
    job_id: str = JOB,
    item: str = Query(..., min_length=1, max_length=4096, description="The item's name."),
    caller=VIEWER,
) -> StreamingResponse:
    """One input image of the job, read from the job's own data folder only (an item
    that is a link out of it is refused, as the job refused to send it)."""
    try:
        file, size = jobs.open_input(common.workspace(request), job_id, item)
    except UsageError as exc:
        raise HTTPException(404, str(exc)) from None
    kind = mimetypes.guess_type(item)[0] or "application/octet-stream"

    def chunks():
        with file:
            while block := file.read(CHUNK):
                yield block

    return StreamingResponse(chunks(), media_type=kind, headers={
        "Content-Length": str(size), "Cache-Control": "private, max-age=300",
        "Content-Disposition": "inline",
    })  # fmt: skip


@router.post("/api/jobs/{job_id}/resume", response_model=common.Accepted, status_code=202)
def resume(
    request: Request,
    options: runner.ResumeOptions,
    job_id: str = JOB,
    wait: float = common.WAIT,
    caller=OPERATOR,
) -> dict:
    """Run the job's pending items again (after a cancel, a restart of the server or
    Ctrl-C of `evc infer run`)."""
    ws = common.workspace(request)
    job = common.found(jobs.get, ws, job_id)
    common.audit(request, {"job": job_id, **options.model_dump(mode="json")})
    if job["state"] == "complete":
        raise HTTPException(409, f"Job {job_id} is complete; nothing to resume.")
    if holder := jobs.holder(ws, job_id):
        raise HTTPException(409, f"Job {job_id} is running: {holder} holds its lock.")
    return _run_job(request, caller, job_id, {}, wait, options.target)


@router.post("/api/jobs/{job_id}/cancel", response_model=common.Accepted, status_code=202)
def cancel(request: Request, job_id: str = JOB, caller=OPERATOR) -> dict:
    """Stop the job cleanly: shards in flight are abandoned, their items stay pending,
    the job is 'interrupted' and can be resumed."""
    ws = common.workspace(request)
    common.found(jobs.get, ws, job_id)
    common.audit(request, {"job": job_id})
    stopped = common.cancel(request, job_id)
    if stopped is not None:
        return stopped | {"job": job_id}
    holder = jobs.holder(ws, job_id)
    raise HTTPException(409, f"Job {job_id} is run by {holder}: stop it there (Ctrl-C)."
                        if holder else f"Job {job_id} is not running.")  # fmt: skip
