"""`evc grafana`: dashboards over the workspace database: build, up, down, push."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Grafana dashboards over the EVC database: build the files, run a Grafana, push.",
    no_args_is_help=True,
)

JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def _ws():
    from evc.config import Workspace

    return Workspace.find()


@app.command()
def build(
    out: Path = typer.Option(
        None, "--out", help="Folder to write into (default: WORKSPACE/grafana)."
    ),
    json: bool = JSON,
) -> None:
    """Write the datasource and dashboard provisioning files and the dashboard JSON."""
    from evc import grafana
    from evc.console import out as console
    from evc.console import print_json

    paths = grafana.build(_ws(), out)
    if json:
        print_json([str(p) for p in paths])
        return
    for path in paths:
        console.print(f"wrote {path}", highlight=False)
