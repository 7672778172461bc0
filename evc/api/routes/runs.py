"""Run-configs: the files in the server's run_cfg/ folder (list, read, validate, run)
and the record of runs (steps and their per-host outcome); cancel a run."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam

from evc.api.auth import OPERATOR, VIEWER
from evc.api.routes import common
from evc.errors import UsageError
from evc.run import config as sc
from evc.run import execute
from evc.run.capabilities import Outcome

router = APIRouter(tags=["runs"], responses=common.ERRORS)
FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.ya?ml$"
FILE = PathParam(..., pattern=FILE_NAME, description="A run-config file name in run_cfg/.")
RUN = PathParam(..., pattern=common.NAME, description="Run id.")
MAX_TEXT = 1 << 20  # a run-config is at most 1 MiB (evc.yamlpos)


def _folder(request: Request) -> Path:
    return request.app.state.settings.run_configs


def _file(request: Request, name: str) -> Path:
    """The run-config ``name`` directly in the server's folder (no other path)."""
    folder = _folder(request).resolve()
    path = folder / name
    if not re.fullmatch(FILE_NAME, name) or path.resolve().parent != folder or not path.is_file():
        raise HTTPException(404, f"No run-config {name!r} in {folder}.")
    return path


@router.get("/api/runconfigs")
def list_files(request: Request, caller=VIEWER) -> dict:
    """The run-configs the server can run (``*.yml``/``*.yaml`` in its run_cfg/ folder)."""
    folder = _folder(request)
    files = sorted(
        p for p in (folder.iterdir() if folder.is_dir() else [])
        if re.fullmatch(FILE_NAME, p.name) and p.is_file()
    )  # fmt: skip
    return {"folder": str(folder), "items": [
        {"name": p.name, "size": p.stat().st_size, "modified": p.stat().st_mtime} for p in files
    ]}  # fmt: skip


@router.get("/api/runconfigs/{name}")
def read_file(request: Request, name: str = FILE, caller=VIEWER) -> dict:
    """A run-config's text."""
    path = _file(request, name)
    with open(path, "rb") as f:
        text = f.read(MAX_TEXT + 1)
    if len(text) > MAX_TEXT:
        raise HTTPException(413, f"{name} is over {MAX_TEXT} bytes: not a run-config.")
    return {"name": name, "text": text.decode("utf-8", "replace")}


def _load(request: Request, name: str, options: execute.StartOptions):
    path = _file(request, name)
    scenario = sc.load(path, dict(options.vars), common.workspace(request))
    return scenario, sc.select(scenario, options.from_step, list(options.only) or None)


@router.post("/api/runconfigs/{name}/validate")
def validate(
    request: Request, options: execute.StartOptions, name: str = FILE, caller=VIEWER
) -> dict:
    """Check the whole file (as `evc run validate`) and return its plan: each step, its
    target's hosts, what it does and the equivalent command. Problems are located."""
    try:
        scenario, selected = _load(request, name, options)
    except UsageError as exc:
        return {"ok": False, "problems": str(exc).splitlines(), "plan": None}
    plan = scenario.to_dict() | {"selected": [s.name for s in selected]}
    return {"ok": True, "problems": [], "plan": plan}


@router.post("/api/runconfigs/{name}/run", response_model=common.Accepted, status_code=202)
def run(
    request: Request,
    options: execute.StartOptions,
    name: str = FILE,
    wait: float = common.WAIT,
    caller=OPERATOR,
) -> dict:
    """Run the file's steps in order (an action; stops at the first failed step). The
    whole file is checked first: a problem answers 400 and runs nothing."""
    params = {"file": name, **options.model_dump(mode="json")}
    common.audit(request, params)
    scenario, selected = _load(request, name, options)
    ws = common.workspace(request)
    run_id = execute.new_run_id()

    def go(progress, stop) -> Outcome:
        done = execute.execute(
            ws, scenario, selected, start=options.from_step, only=list(options.only) or None,
            progress=progress, run_id=run_id, stop=stop,
        )  # fmt: skip
        return Outcome(
            done["state"] == "success",
            f"run {run_id} of {name}: {done['state']}, {done['steps_ok']} steps ok, "
            f"{done['steps_failed']} failed",
            detail={k: done[k] for k in ("id", "state", "steps_ok", "steps_failed")},
        )

    out = common.start(request, caller, "run", params, go, ref=run_id, cancellable=True, wait=wait)
    return out | {"run": run_id}


@router.get("/api/runs", response_model=common.Page)
def list_runs(
    request: Request, limit: int = common.LIMIT, offset: int = common.OFFSET, caller=VIEWER
) -> dict:
    """Run-config runs, newest first (from `evc run` and from the API alike)."""
    return execute.page(common.workspace(request), limit, offset)


@router.get("/api/runs/{run_id}")
def show_run(request: Request, run_id: str = RUN, caller=VIEWER) -> dict:
    """A run and each of its steps: state, times, summary, per-host outcome, result."""
    return common.found(execute.get_run, common.workspace(request), run_id)


@router.post("/api/runs/{run_id}/cancel", response_model=common.Accepted, status_code=202)
def cancel(request: Request, run_id: str = RUN, caller=OPERATOR) -> dict:
    """Stop a run this server runs before its next step (the step running finishes)."""
    common.found(execute.get_run, common.workspace(request), run_id)
    common.audit(request, {"run": run_id})
    stopped = common.cancel(request, run_id)
    if stopped is None:
        raise HTTPException(409, f"Run {run_id} is not running in this server.")
    return stopped | {"run": run_id}
