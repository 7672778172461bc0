"""`evc infer`: inference jobs spread across the nodes that run a model."""

from __future__ import annotations

import typer

from evc import names
from evc.cli.context import workspace
from evc.cli.options import JSON, command
from evc.cli.progress import progress
from evc.infer.runner import RunOptions

app = typer.Typer(help="Inference jobs across the fleet: run, resume, list, status, results.",
                  no_args_is_help=True)  # fmt: skip

# `--target T` is how 0.1 spelled the positional TARGET: hidden, kept for a release.
TARGET_ALIAS = typer.Option(None, "--target", hidden=True)
JOB = typer.Argument(..., help="Job id (see `evc infer list`).")


def _report(result, json: bool, check: bool = True) -> None:
    """The job's summary; with ``check``, exit 1 unless every item ended ok."""
    from evc.console import line, out, print_json, print_table, styled

    if json:
        print_json(result.to_dict())
    else:
        j = result.job
        print_table(
            f"job {j['id']}: {j['model']}:{j['version']} ({_how(j)})",
            ["node", "shards", "items", "ok", "failed", "busy s", "items/s"],
            [
                [n, str(r.get("shards", 0)), str(r.get("items") or 0), str(r.get("ok") or 0),
                 str(r.get("failed") or 0), str(r.get("busy_s") or "-"),
                 str(r.get("throughput") or "-")]
                for n, r in sorted(result.nodes.items())
            ],
        )  # fmt: skip
        for node, why in sorted(result.skipped_nodes.items()):
            line(styled("skipped", "yellow"), f" {node}: {why}")
        out.print(
            f"{result.status}: {j['items']} items, {j['ok']} ok, {j['failed']} failed, "
            f"state {j['state']}, makespan {j['makespan_s'] or '-'} s",
            highlight=False,
        )
    if check:
        raise typer.Exit(result.exit_code)


def _how(job: dict) -> str:
    """A job's strategy, or 'pull' (the nodes take the shards: no strategy applies)."""
    return "pull" if job.get("mode") == "pull" else job["strategy"]


@command(app, RunOptions)
def run(options: RunOptions, json: bool = JSON, target_option: str = TARGET_ALIAS) -> None:
    """Run MODEL over a data set spread across the nodes; every item ends ok or with an error."""
    from evc.infer import runner

    if target_option is not None:
        options = RunOptions.of(**{**options.model_dump(), "target": target_option})
    _report(runner.run(workspace(), options, progress(json)), json)


@app.command()
def resume(
    job: str = JOB,
    target: str = typer.Argument(None, help="Nodes to use (default: the job's target)."),
    json: bool = JSON,
    target_option: str = TARGET_ALIAS,
) -> None:
    """Run the pending items of an interrupted job."""
    from evc.infer import runner

    target = target_option or target
    if target is not None:
        names.check_target(target)
    _report(runner.resume(workspace(), job, target=target, progress=progress(json)), json)


@app.command("list")
def list_(json: bool = JSON) -> None:
    """Recent jobs, newest first."""
    from evc.console import print_json, print_table
    from evc.infer import jobs

    rows = jobs.list_jobs(workspace())
    if json:
        print_json(rows)
        return
    print_table(
        "jobs",
        ["id", "model", "strategy", "state", "items", "ok", "failed", "makespan s"],
        [[r["id"], f"{r['model']}:{r['version']}", _how(r), r["state"], str(r["items"]),
          str(r["ok"]), str(r["failed"]), str(r["makespan_s"] or "-")] for r in rows],
    )  # fmt: skip


@app.command()
def status(job: str = JOB, json: bool = JSON) -> None:
    """A job's state, counts, per-node items and throughput, and makespan."""
    from evc.infer import jobs

    _report(jobs.status(workspace(), job), json, check=False)


@app.command()
def results(
    job: str = JOB,
    json: bool = JSON,
    csv: bool = typer.Option(False, "--csv", help="One CSV row per detection (or per item)."),
) -> None:
    """Every item's result and detections."""
    import sys

    from evc.console import print_json, print_table
    from evc.infer import jobs

    rows = jobs.results(workspace(), job)
    if json:
        print_json(rows)
    elif csv:
        import csv as csvlib
        import json as jsonlib

        cols = ["item", "state", "node", "error", "latency_ms", "label", "score"]
        cols += ["x", "y", "w", "h", "keypoints"]
        writer = csvlib.DictWriter(sys.stdout, cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            for d in r["detections"] or [{}]:
                points = d.get("keypoints")
                writer.writerow({**r, **d, "keypoints": jsonlib.dumps(points) if points else ""})
    else:
        print_table(
            f"results of {job}",
            ["item", "state", "node", "detections", "error"],
            [[r["item"], r["state"], r["node"] or "-",
              "\n".join(map(describe_detection, r["detections"])), r["error"] or ""]
             for r in rows],
        )  # fmt: skip


def describe_detection(d: dict) -> str:
    """One detection of the results table: label, score, box, and its keypoints below."""
    x, y, w, h = (round(d[k]) for k in ("x", "y", "w", "h"))
    text = f"{d['label']} {d['score']:.2f} at {x},{y} {w}x{h}"
    points = d.get("keypoints") or []
    named = (f"{p.get('name', i)} {round(p['x'])},{round(p['y'])}" for i, p in enumerate(points))
    return text + ("\n  " + ", ".join(named) if points else "")
