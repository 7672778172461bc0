"""`evc db`: housekeeping of the workspace database."""

from __future__ import annotations

import typer

from evc.cli.context import workspace

app = typer.Typer(help="The workspace database: prune old telemetry.", no_args_is_help=True)


@app.command()
def prune(
    older_than: str = typer.Option(..., "--older-than", help="Age to delete: 30d, 12h, 2w, ..."),
    json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Delete telemetry (metrics, container states, node events) and the API's action
    progress lines older than a duration."""
    from evc import logs
    from evc.console import out, print_json

    result = logs.prune(workspace(), logs.parse_duration(older_than, "--older-than"))
    if json:
        print_json(result)
        return
    for table, n in result["deleted"].items():
        out.print(f"{table}: {n} rows deleted", highlight=False)
