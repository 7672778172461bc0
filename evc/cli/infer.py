"""`evc infer`: inference jobs spread across the nodes that run a model."""

from __future__ import annotations

from pathlib import Path

import typer

from evc.cli.context import workspace

app = typer.Typer(help="Inference jobs across the fleet: run, resume, list, status, results.",
                  no_args_is_help=True)  # fmt: skip

JSON = typer.Option(False, "--json", help="Print the result as JSON.")
JOB = typer.Argument(..., help="Job id (see `evc infer list`).")


def _report(result, json: bool, check: bool = True) -> None:
    """The job's summary; with ``check``, exit 1 unless every item ended ok."""
    from evc.console import out, print_json, print_table

    if json:
        print_json(result.to_dict())
    else:
        j = result.job
        print_table(
            f"job {j['id']}: {j['model']}:{j['version']} ({j['strategy']})",
            ["node", "shards", "items", "ok", "failed", "busy s", "items/s"],
            [
                [n, str(r.get("shards", 0)), str(r.get("items") or 0), str(r.get("ok") or 0),
                 str(r.get("failed") or 0), str(r.get("busy_s") or "-"),
                 str(r.get("throughput") or "-")]
                for n, r in sorted(result.nodes.items())
            ],
        )  # fmt: skip
        for node, why in sorted(result.skipped_nodes.items()):
            out.print(f"[yellow]skipped[/] {node}: {why}", highlight=False)
        out.print(
            f"{result.status}: {j['items']} items, {j['ok']} ok, {j['failed']} failed, "
            f"state {j['state']}, makespan {j['makespan_s'] or '-'} s",
            highlight=False,
        )
    if check and result.status != "success":
        raise typer.Exit(1)


@app.command()
def run(
    model: str = typer.Argument(..., help="NAME:VERSION, or NAME for the version deployed."),
    data: Path = typer.Option(..., help="A folder of images, a .zip of images, or a video."),
    target: str = typer.Option("all", help="Ansible pattern of the nodes to use."),
    strategy: str = typer.Option(
        "dynamic", help="round-robin | load | proportional | dynamic (work stealing)."
    ),
    retries: int = typer.Option(2, help="Re-runs of a failed shard, each on another node."),
    conf: float = typer.Option(None, help="Minimum score (default: the model's)."),
    iou: float = typer.Option(None, help="NMS IoU threshold (default: the model's)."),
    imgsz: int = typer.Option(None, help="Inference size (default: the model's)."),
    fps: float = typer.Option(1.0, help="Frames per second taken from a video."),
    shard_size: int = typer.Option(None, help="Items per shard for dynamic (default: auto)."),
    json: bool = JSON,
) -> None:
    """Run MODEL over a data set spread across the nodes; every item ends ok or with an error."""
    from evc.infer import runner

    result = runner.run(
        workspace(), model, data, target, strategy, retries, conf, iou, imgsz, fps, shard_size,
        progress=not json,
    )  # fmt: skip
    _report(result, json)


@app.command()
def resume(
    job: str = JOB,
    target: str = typer.Option(None, help="Nodes to use (default: the job's target)."),
    json: bool = JSON,
) -> None:
    """Run the pending items of an interrupted job."""
    from evc.infer import runner

    _report(runner.resume(workspace(), job, target, progress=not json), json)


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
        [[r["id"], f"{r['model']}:{r['version']}", r["strategy"], r["state"], str(r["items"]),
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

        cols = ["item", "state", "node", "error", "latency_ms", "label", "score"]
        cols += ["x", "y", "w", "h"]
        writer = csvlib.DictWriter(sys.stdout, cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            for d in r["detections"] or [{}]:
                writer.writerow({**r, **d})
    else:
        print_table(
            f"results of {job}",
            ["item", "state", "node", "detections", "error"],
            [[r["item"], r["state"], r["node"] or "-",
              ", ".join(f"{d['label']} {d['score']:.2f}" for d in r["detections"]),
              r["error"] or ""] for r in rows],
        )  # fmt: skip
