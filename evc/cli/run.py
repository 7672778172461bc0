"""`evc run`: run-configs (scenarios): check, plan, run, and the record of past runs.

``evc run FILE`` is short for ``evc run start FILE``; the group sends any first word
that is not one of its commands to ``start``.
"""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup

from evc.cli.context import workspace
from evc.cli.options import JSON


class _DefaultStart(TyperGroup):
    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["start", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx, formatter):
        formatter.write_usage(ctx.command_path, "FILE [OPTIONS] | COMMAND [ARGS]")


app = typer.Typer(
    cls=_DefaultStart,
    help="Run-configs: one YAML file that enrols, builds, deploys, infers and reports. "
    "`evc run FILE` checks the whole file, then runs its steps in order.",
    no_args_is_help=True,
)

FILE = typer.Argument(..., help="Run-config YAML, e.g. run_cfg/demo.yaml.")
VAR = typer.Option(None, "--var", help="NAME=VALUE, overrides a var of the file (repeatable).")


def _print_plan(scenario, selected) -> None:
    from rich.text import Text

    from evc.console import out, print_table, styled

    chosen = {s.index for s in selected}
    rows = []
    for s in scenario.steps:
        state = (
            styled("not selected", "dim")
            if s.index not in chosen
            else "run"
            if s.run
            else styled("skip (when)", "dim")
        )
        hosts = (
            "controller"
            if s.target is None
            else (f"{s.target}: {', '.join(s.hosts)}" if s.hosts is not None else s.target)
        )
        what = Text.assemble(f"{s.what}\n", (s.command, "dim"))
        if s.skipped_because and s.index in chosen:
            what.append(f"\n{s.skipped_because}", "yellow")
        rows.append([str(s.index), s.name, s.kind, hosts, state, what])
    print_table(f"plan of {scenario.path}", ["#", "step", "do", "targets", "", "what"], rows)
    if not scenario.targets_checked:
        out.print("targets not resolved: no workspace here", style="yellow", highlight=False)


@app.command()
def start(
    file: Path = FILE,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; run nothing."),
    start: str = typer.Option(None, "--from", help="Start at this step (resume a failed run)."),
    only: list[str] = typer.Option(None, "--only", help="Run only this step (repeatable)."),
    var: list[str] = VAR,
    trust_weights: bool = typer.Option(
        False,
        "--trust-weights",
        help="Let model.build steps export pickled .pt weights that are not your own file "
        "(loading a .pt runs code inside it).",
    ),
    json: bool = JSON,
) -> None:
    """Run a run-config (the default: `evc run FILE`): checked whole first, then step by step."""
    from evc.cli.progress import progress
    from evc.console import print_json
    from evc.run import config as sc
    from evc.run import execute as scenario_runs
    from evc.run.variables import parse_vars

    ws = workspace()
    scenario = sc.load(file, parse_vars(var or []), ws)
    selected = sc.select(scenario, start, only)
    if dry_run:
        if json:
            print_json({**scenario.to_dict(), "selected": [s.name for s in selected]})
        else:
            _print_plan(scenario, selected)
        return
    run = scenario_runs.execute(
        ws,
        scenario,
        selected,
        start=start,
        only=only,
        progress=progress(json),
        on_step=None if json else _Live(len(selected)),
        trust_weights=trust_weights,
    )
    if json:
        print_json(run)
    else:
        _print_run(run)
        _print_found(ws, run)
    if run["state"] != "success":
        raise typer.Exit(1)


class _Live:
    """One line when a step starts and one when it ends; the step's own progress between."""

    def __init__(self, total: int):
        self.total, self.n = total, 0

    def __call__(self, event, step, outcome) -> None:
        from rich.text import Text

        from evc.console import line, out, styled

        if event == "skip":
            line(
                styled(f"{step.name}  skipped", "dim"), f": {step.skipped_because}", soft_wrap=True
            )
            return
        if event == "start":
            self.n += 1
            where = f" on {step.target}" + (f" ({len(step.hosts)} hosts)" if step.hosts else "")
            title = Text.assemble((step.name, "bold"), f"  {step.kind}")
            out.rule(title + (where if step.target else ""), align="left")
            return
        mark = styled("ok", "green") if outcome.ok else styled("FAILED", "red")
        line(mark, f" {outcome.summary}", soft_wrap=True)


def _print_run(run: dict) -> None:
    from evc.console import STATE_STYLE, out, print_table, state

    style = {**STATE_STYLE, "not_run": "dim", "not_selected": "dim", "pending": "dim"}
    rows = [
        [
            str(s["idx"]),
            s["name"],
            s["kind"],
            s["target"] or "-",
            state(s["state"], style),
            _secs(s),
            s["summary"] or "",
        ]
        for s in run["steps"]
    ]
    print_table(
        f"run {run['id']} of {run['file']}",
        ["#", "step", "do", "target", "state", "s", "result"],
        rows,
    )
    out.print(
        f"{run['state']}: {run['steps_ok']} steps ok, {run['steps_failed']} failed "
        f"(`evc run show {run['id']}`)",
        highlight=False,
    )
    if run["resume_from"]:
        out.print(
            f"resume with: evc run {run['file']} --from {run['resume_from']}",
            style="yellow",
            highlight=False,
            soft_wrap=True,
        )


def _print_found(ws, run: dict) -> None:
    """What the run's inference jobs found, per image: one column per job (its model), the
    labels with their counts, or the one detection with its box and keypoints."""
    from collections import Counter

    from evc.cli.infer import describe_detection
    from evc.console import print_table
    from evc.errors import UsageError
    from evc.infer import jobs

    found: dict[str, dict[int, str]] = {}
    columns = []
    for step in run["steps"]:
        job = step["detail"] if step["kind"] == "infer.run" else None
        if not isinstance(job, dict) or "id" not in job:
            continue
        try:
            rows = jobs.results(ws, job["id"])
        except UsageError:  # the job was deleted since
            continue
        columns.append(f"{job.get('model')}:{job.get('version')}\n{job['id']}")
        for r in rows:
            dets = r["detections"]
            counts = Counter(d["label"] for d in dets).most_common()
            cell = (
                f"{r['state']}: {r['error'] or ''}" if r["state"] != "ok"
                else describe_detection(dets[0]) if len(dets) == 1
                else ", ".join(f"{n} {label}" for label, n in counts) or "-"
            )  # fmt: skip
            found.setdefault(r["item"], {})[len(columns) - 1] = cell
    if columns:
        print_table(
            "found per image (`evc infer results JOB` has every box)",
            ["image", *columns],
            [[item, *(cells.get(i, "") for i in range(len(columns)))]
             for item, cells in sorted(found.items())],
        )  # fmt: skip


def _secs(step: dict) -> str:
    if step["started"] and step["ended"]:
        return f"{step['ended'] - step['started']:.1f}"
    return "-"


@app.command()
def validate(
    file: Path = FILE,
    var: list[str] = VAR,
    json: bool = JSON,
) -> None:
    """Check a run-config (schema, variables, targets against the inventory); run nothing."""
    from evc.console import out, print_json
    from evc.run import config as sc
    from evc.run.variables import parse_vars

    ws = workspace(required=False)  # none: the file alone is checked
    scenario = sc.load(file, parse_vars(var or []), ws)
    if json:
        print_json(scenario.to_dict())
        return
    checked = "" if scenario.targets_checked else " (targets not resolved: no workspace)"
    out.print(f"{file}: valid, {len(scenario.steps)} steps{checked}", highlight=False)


@app.command("list")
def list_(json: bool = JSON) -> None:
    """Recent runs, newest first."""
    from datetime import datetime

    from evc.console import print_json, print_table
    from evc.run import execute as scenario_runs

    runs = scenario_runs.list_runs(workspace())
    if json:
        print_json(runs)
        return
    print_table(
        "scenario runs",
        ["id", "file", "selection", "state", "steps", "ok", "failed", "started", "resume from"],
        [
            [
                r["id"],
                r["file"],
                r["selection"] or "-",
                r["state"],
                str(r["steps_total"]),
                str(r["steps_ok"]),
                str(r["steps_failed"]),
                datetime.fromtimestamp(r["started"]).strftime("%Y-%m-%d %H:%M"),
                r["resume_from"] or "-",
            ]
            for r in runs
        ],
    )


@app.command()
def show(
    run_id: str = typer.Argument(..., help="Run id (see `evc run list`)."), json: bool = JSON
) -> None:
    """One run: each step's state, duration, result and hosts."""
    from evc.console import print_json
    from evc.run import execute as scenario_runs

    ws = workspace()
    run = scenario_runs.get_run(ws, run_id)
    if json:
        print_json(run)
    else:
        _print_run(run)
        _print_found(ws, run)
