"""`evc inventory`: the generated Ansible inventory."""

from __future__ import annotations

import typer

from evc.cli.context import workspace

app = typer.Typer(
    help="The Ansible inventory generated from the device database.", no_args_is_help=True
)


@app.command()
def show() -> None:
    """Regenerate the inventory from the database and print it."""
    from evc import db, devices

    ws = workspace()
    devices.regenerate_inventory(ws, db.workspace_db(ws))
    typer.echo(f"# {ws.inventory}")
    typer.echo(ws.inventory.read_text(), nl=False)
