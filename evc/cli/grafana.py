"""`evc grafana`: dashboards over the workspace database: build, up, down, push."""

from __future__ import annotations

import os
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


@app.command()
def push(
    url: str = typer.Option(..., "--url", help="Grafana's base URL, e.g. http://grafana:3000."),
    token_env: str = typer.Option(
        "GRAFANA_TOKEN",
        help="Environment variable holding a service account token "
        "(prompted for, hidden, when it is unset).",
    ),
    db_path: str = typer.Option(
        None, help="The database file as that Grafana sees it (default: this workspace's)."
    ),
    json: bool = JSON,
) -> None:
    """Create or update the EVC datasource and dashboards in a running Grafana, by uid."""
    from evc import grafana
    from evc.console import STATE_STYLE, out, print_json, print_table

    token = os.environ.get(token_env) or typer.prompt(
        f"Grafana token ({token_env} is not set)", hide_input=True, default="",
        show_default=False, err=True,
    )  # fmt: skip
    result = grafana.push(_ws(), url, token, db_path)
    if json:
        print_json(result.to_dict())
    else:
        style = {"created": "green", "updated": "yellow", "unchanged": "dim",
                 "failed": STATE_STYLE["failed"]}  # fmt: skip
        print_table(
            f"push to {result.url} (Grafana {result.grafana_version})",
            ["kind", "uid", "title", "result", "error"],
            [[i.kind, i.uid, i.title, f"[{style[i.action]}]{i.action}[/]", i.error or ""]
             for i in result.items],
        )  # fmt: skip
        bad = sum(i.action == "failed" for i in result.items)
        out.print(f"{len(result.items) - bad} of {len(result.items)} items fine", highlight=False)
    if not result.ok:
        raise typer.Exit(1)
