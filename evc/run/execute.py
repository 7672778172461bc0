"""Running a checked run-config: its steps in order, each recorded as it ends.

A run stops at the first failed step unless that step says ``continue_on_error``;
its row names the step to resume from (``evc run FILE --from STEP``).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from evc import db as evcdb
from evc import redact, views
from evc.config import Workspace
from evc.errors import EVCError, Interrupted, UsageError
from evc.options import Options, opt
from evc.progress import SILENT, Progress
from evc.run import capabilities
from evc.run.config import ENROL, Scenario, Step
from evc.run.variables import VAR_RE

# on_step(event, step, outcome): event is "start", "end" or "skip" (``when`` is false);
# outcome is None but at "end"
Listener = Callable[[str, Step, capabilities.Outcome | None], None]


def _var_name(value: str) -> str:
    if not VAR_RE.match(value):
        raise ValueError(f"{value[:80]!r} is not a variable name (letters, digits and '_')")
    return value


StepName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")]


class StartOptions(Options):
    """Run a run-config from the server's folder of run-configs (the HTTP API's body;
    `evc run FILE --var ... --from ... --only ...` says the same on the command line)."""

    vars: Annotated[
        dict[Annotated[str, AfterValidator(_var_name)], Annotated[str, Field(max_length=4096)]],
        Field(max_length=200),
    ] = opt({}, help="NAME -> VALUE, overriding the file's vars (typed as declared).")
    from_step: StepName | None = opt(None, help="Start at this step (resume a failed run).")
    only: Annotated[list[StepName], Field(max_length=200)] = opt([], help="Run only these steps.")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]


def _selection(start: str | None, only: list[str] | None) -> str | None:
    if start:
        return f"--from {start}"
    return f"--only {','.join(only)}" if only else None


def execute(
    ws: Workspace,
    scenario: Scenario,
    selected: list[Step],
    *,
    start: str | None = None,
    only: list[str] | None = None,
    progress: Progress = SILENT,
    on_step: Listener | None = None,
    trust_weights: bool = False,
    run_id: str | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Run ``selected`` (steps of ``scenario``) and return the run as ``get_run`` does.

    ``trust_weights`` is the operator's permission to export pickled weights that are not
    their own file (`evc run --trust-weights`). ``run_id`` is the caller's (default: a
    new one); ``stop`` set (from another thread) ends the run before its next step, as
    'interrupted' (a step that is running finishes first)."""
    db = evcdb.workspace_db(ws)
    run_id = run_id or new_run_id()
    chosen = {s.index for s in selected}
    with evcdb.transaction(db):
        db["scenario_runs"].insert(
            {
                "id": run_id,
                "file": str(scenario.path.resolve()),
                "sha256": scenario.digest,
                "description": scenario.description,
                "vars": json.dumps(redact.data(scenario.vars, scenario.env), default=str),
                "selection": _selection(start, only),
                "state": "running",
                "started": time.time(),
                "steps_total": len(selected),
            }
        )
        db["scenario_steps"].insert_all(
            {
                "run_id": run_id,
                "idx": s.index,
                "name": s.name,
                "kind": s.kind,
                "target": s.target,
                "state": "not_selected"
                if s.index not in chosen
                else ("pending" if s.run else "skipped"),
                "summary": s.skipped_because if s.index in chosen else None,
            }
            for s in scenario.steps
        )
    ok = failed = 0
    stopped_at: str | None = None
    state = "running"
    try:
        for step in selected:
            if not step.run:
                if on_step:
                    on_step("skip", step, None)
                continue
            if stopped_at:
                _update(db, run_id, step, {"state": "not_run"})
                continue
            if stop is not None and stop.is_set():
                raise Interrupted(
                    f"Run {run_id} stopped before step {step.name!r}: "
                    f"`evc run {scenario.path} --from {step.name}` goes on from there."
                )
            outcome = _run_step(ws, db, run_id, scenario, step, progress, on_step, trust_weights)
            ok += outcome.ok
            failed += not outcome.ok
            if not outcome.ok and not step.continue_on_error:
                stopped_at = step.name
        state = "failed" if failed else "success"
    finally:
        with evcdb.transaction(db):
            if state == "running":  # Ctrl-C (or a bug) in the middle of a step
                state = "interrupted"
                db.execute(
                    "UPDATE scenario_steps SET state = 'failed', ended = ?, "
                    "summary = 'interrupted' WHERE run_id = ? AND state = 'running'",
                    [time.time(), run_id],
                )
            first_bad = stopped_at or _first_unfinished(db, run_id)
            db["scenario_runs"].update(
                run_id,
                {
                    "state": state,
                    "ended": time.time(),
                    "steps_ok": ok,
                    "steps_failed": failed,
                    "resume_from": first_bad if state != "success" else None,
                },
            )
    return get_run(ws, run_id)


def _run_step(
    ws,
    db,
    run_id: str,
    scenario: Scenario,
    step: Step,
    progress: Progress,
    on_step: Listener | None,
    trust_weights: bool,
) -> capabilities.Outcome:
    started = time.time()
    _update(db, run_id, step, {"state": "running", "started": started})
    if on_step:
        on_step("start", step, None)
    try:
        if step.kind == ENROL:
            outcome = capabilities.enrol(ws, scenario.devices, progress)
        else:
            outcome = capabilities.run(
                step.kind, ws, step.options, progress, trust_weights=trust_weights
            )
    except EVCError as exc:
        if exc.exit_code == 130:  # an inference job stopped by Ctrl-C
            raise
        outcome = capabilities.Outcome(False, str(exc))
    except Exception as exc:  # a bug in a step: recorded, and the run stops like any failure
        if os.environ.get("EVC_DEBUG"):
            raise
        outcome = capabilities.Outcome(False, f"internal error: {type(exc).__name__}: {exc}")
    _update(
        db,
        run_id,
        step,
        {
            "state": "ok" if outcome.ok else "failed",
            "ended": time.time(),
            "summary": redact.text(outcome.summary, scenario.env),
            "hosts": json.dumps(outcome.hosts),
            "detail": json.dumps(redact.data(_plain(outcome.detail), scenario.env)),
        },
    )
    if on_step:
        on_step("end", step, outcome)
    return outcome


def _plain(detail: Any) -> Any:
    """A step's result as JSON types (paths, dataclasses as dumped by ``default=str``)."""
    return json.loads(json.dumps(detail, default=str))


def _update(db, run_id: str, step: Step, values: dict) -> None:
    with evcdb.transaction(db):
        db["scenario_steps"].update((run_id, step.index), values)


def _first_unfinished(db, run_id: str) -> str | None:
    row = next(
        db.query(
            "SELECT name FROM scenario_steps WHERE run_id = ? AND state IN "
            "('failed', 'running', 'pending', 'not_run') ORDER BY idx LIMIT 1",
            [run_id],
        ),
        None,
    )
    return row["name"] if row else None


def get_run(ws: Workspace, run_id: str) -> dict[str, Any]:
    """A run and its steps (hosts and details parsed)."""
    db = evcdb.workspace_db(ws)
    rows = list(db["scenario_runs"].rows_where("id = ?", [run_id]))
    if not rows:
        recent = [
            r["id"] for r in db.query("SELECT id FROM scenario_runs ORDER BY started DESC LIMIT 5")
        ]
        raise UsageError(
            f"No scenario run {run_id!r}. Recent runs: "
            f"{', '.join(recent) or 'none (evc run FILE)'}."
        )
    run = dict(rows[0])
    run["vars"] = json.loads(run["vars"])
    run["steps"] = []
    for s in db["scenario_steps"].rows_where("run_id = ?", [run_id], order_by="idx"):
        s = dict(s)
        for key in ("hosts", "detail"):
            s[key] = json.loads(s[key]) if s[key] else None
        run["steps"].append(s)
    return run


def page(ws: Workspace, limit: int, offset: int, state: str | None = None) -> dict[str, Any]:
    """Runs, newest first."""
    return views.page(
        evcdb.workspace_db(ws), "FROM scenario_runs WHERE (? IS NULL OR state = ?)",
        [state, state], "started DESC", limit, offset,
    )  # fmt: skip


def list_runs(ws: Workspace, limit: int = 50) -> list[dict[str, Any]]:
    """Recent runs, newest first."""
    db = evcdb.workspace_db(ws)
    return list(db.query("SELECT * FROM scenario_runs ORDER BY started DESC LIMIT ?", [limit]))
