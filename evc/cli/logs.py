"""`evc logs`: node telemetry: collect a round, show the latest values, export."""

from __future__ import annotations

from pathlib import Path

import typer

from evc.cli.context import workspace
from evc.cli.options import JSON, command
from evc.cli.progress import progress
from evc.logs import CollectOptions

app = typer.Typer(
    help="Node telemetry: collect a sample round, show latest values, export.",
    no_args_is_help=True,
)

NODE = typer.Option(None, "--node", "-n", help="Only this node.")
OFFLINE_AFTER = typer.Option(
    None, "--offline-after", min=1,
    help="Missed rounds in a row that make a node offline (default: evc.yaml telemetry."
    "offline_after, 3).",
)  # fmt: skip


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def print_collect(result) -> None:
    """Per-host table of a telemetry round, its liveness changes, a summary line."""
    from evc.console import out, print_table, state

    rows = []
    for host, r in sorted(result.run.hosts.items()):
        s = result.samples.get(host) or {}
        rows.append(
            [host, state(r.state), _pct(s.get("cpu_pct")),
             _pct(s.get("mem_pct")), _pct(s.get("disk_pct")), str(len(s.get("containers") or [])),
             r.message or ""]
        )  # fmt: skip
    print_table(
        f"telemetry on {result.run.target}",
        ["node", "state", "CPU %", "mem %", "disk %", "containers", "message"],
        rows,
    )
    for e in result.events:
        out.print(f"{e['node']}: {e['from_state']} -> {e['to_state']}", highlight=False)
    run = result.run
    out.print(
        f"{run.status}: {result.ingested} samples from {len(run.hosts)} nodes "
        f"in {run.ended - run.started:.1f} s",
        highlight=False,
    )


@command(app, CollectOptions)
def collect(options: CollectOptions, json: bool = JSON) -> None:
    """One telemetry round: sample every targeted node, store it, update liveness."""
    from evc import logs
    from evc.console import print_json

    result = logs.collect(workspace(), options, progress(json))
    if json:
        print_json(result.to_dict())
    else:
        print_collect(result)
    raise typer.Exit(result.exit_code)


@app.command()
def show(
    node: str = NODE,
    since: str = typer.Option("1h", help="Window: 15m, 1h, 2d, ..."),
    json: bool = JSON,
) -> None:
    """Latest values per node, with CPU and memory sparklines over the window."""
    from evc import logs
    from evc.console import ago, human_bytes, print_json, print_table, sparkline

    views = logs.show(workspace(), node, logs.parse_duration(since, "--since"))
    if json:
        print_json(views)
        return
    rows = []
    for v in views:
        s = v["sample"] or {}
        temp = s.get("temp_max_c")
        accel = [f"GPU {s['gpu_util_pct']:.0f}%"] if s.get("gpu_util_pct") is not None else []
        accel += [f"NPU {s['npu_util_pct']:.0f}%"] if s.get("npu_util_pct") is not None else []
        running = sum(c["state"] == "running" for c in v["containers"])
        rows.append(
            [v["name"], v["status"], ago(v["last_seen"]), _pct(s.get("cpu_pct")),
             f"{_pct(s.get('mem_pct'))} of {human_bytes(s.get('mem_total'))}" if s else "-",
             _pct(s.get("disk_pct")), "-" if s.get("load1") is None else f"{s['load1']:.2f}",
             "-" if temp is None else f"{temp:.0f}°C",
             f"{human_bytes(s.get('net_rx_bps'), '/s')} / {human_bytes(s.get('net_tx_bps'), '/s')}",
             " ".join(accel) or "-", f"{running}/{len(v['containers'])}",
             sparkline(v["series"]["cpu_pct"]), sparkline(v["series"]["mem_pct"])]
        )  # fmt: skip
    print_table(
        f"telemetry, last {since}",
        ["node", "status", "last seen", "CPU %", "mem %", "disk %", "load1", "temp",
         "net rx / tx", "GPU/NPU", "containers", "CPU", "memory"],
        rows,
    )  # fmt: skip


@app.command()
def export(
    format: str = typer.Option("csv", "--format", "-f", help="Output format: csv."),
    since: str = typer.Option(None, help="Only samples newer than this: 15m, 1h, 30d, ..."),
    node: str = NODE,
    output: Path = typer.Option(None, "--output", "-o", help="Write here (default: stdout)."),
) -> None:
    """Every stored sample (oldest first), one row per node per sample."""
    from evc import logs
    from evc.console import err
    from evc.errors import UsageError

    if format not in logs.EXPORT_FORMATS:
        raise UsageError(f"--format {format!r}: expected one of {', '.join(logs.EXPORT_FORMATS)}.")
    since_s = logs.parse_duration(since, "--since") if since else None
    n = logs.export_csv(workspace(), output, since_s, node)
    if output:
        err.print(f"wrote {n} rows to {output}", highlight=False)
