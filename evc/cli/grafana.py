"""`evc grafana`: dashboards over the workspace database: build, up, down, push."""

from __future__ import annotations

import os

import typer

from evc.cli.context import workspace
from evc.cli.options import JSON, command
from evc.cli.progress import progress
from evc.grafana.provision import BuildOptions

app = typer.Typer(
    help="Grafana dashboards over the EVC database: build the files, run a Grafana, push.",
    no_args_is_help=True,
)


@command(app, BuildOptions)
def build(options: BuildOptions, json: bool = JSON) -> None:
    """Write the datasource and dashboard provisioning files and the dashboard JSON."""
    from evc import grafana
    from evc.console import out as console
    from evc.console import print_json

    paths = grafana.build(workspace(), options.out)
    if json:
        print_json([str(p) for p in paths])
        return
    for path in paths:
        console.print(f"wrote {path}", highlight=False)


@app.command()
def up(
    image: str = typer.Option(None, help="Grafana image (default: grafana/grafana-oss:11.6.0)."),
    port: int = typer.Option(3000, help="Port on this machine."),
    bind: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: all)."),
    install_plugin: bool = typer.Option(
        True,
        help="Install frser-sqlite-datasource at start (needs network); "
        "--no-install-plugin for an image that has it.",
    ),
    allow_anonymous: bool = typer.Option(
        False,
        "--allow-anonymous",
        help="Let anyone who reaches the port view the dashboards without logging in "
        "(Viewer role). Default: everyone logs in.",
    ),
    json: bool = JSON,
) -> None:
    """Run Grafana in a container with the EVC dashboards and this workspace's database
    (read-only); the admin password is generated once, 0600 in .evc/."""
    from evc.console import out, print_json
    from evc.grafana import server

    ws = workspace()
    result = server.up(
        ws, image or server.DEFAULT_IMAGE, port, bind, install_plugin,
        allow_anonymous=allow_anonymous, progress=progress(json),
    )  # fmt: skip
    if json:
        print_json(result.to_dict())
        return
    viewers = "anyone may view" if result.anonymous else "everyone logs in"
    out.print(
        f"Grafana is up at {result.url} (container {result.container}, image {result.image}, "
        f"database read-only, kept open by {result.keeper}); dashboards are in the EVC "
        f"folder; {viewers}.",
        highlight=False,
    )
    if result.password_created:
        out.print(
            f"Log in as {server.ADMIN_USER} with the password {server.admin_password(ws)} "
            f"(shown once; kept 0600 in {result.password_file}; `evc grafana password` "
            "shows it again).",
            highlight=False,
        )
    else:
        out.print(
            f"Log in as {server.ADMIN_USER}; `evc grafana password` shows the password.",
            highlight=False,
        )


@app.command()
def password() -> None:
    """Print the Grafana admin password that `evc grafana up` generated."""
    from evc.grafana import server

    typer.echo(server.admin_password(workspace()))


@app.command()
def down(json: bool = JSON) -> None:
    """Remove this workspace's Grafana container and its database keeper."""
    from evc.console import out, print_json
    from evc.grafana import server

    ws = workspace()
    removed = server.down(ws)
    if json:
        print_json({"container": server.container_name(ws), "removed": removed})
        return
    out.print(f"{server.container_name(ws)}: {'removed' if removed else 'not running'}")


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
    from evc.console import STATE_STYLE, out, print_json, print_table, state

    token = os.environ.get(token_env) or typer.prompt(
        f"Grafana token ({token_env} is not set)", hide_input=True, default="",
        show_default=False, err=True,
    )  # fmt: skip
    result = grafana.push(workspace(), url, token, db_path)
    if json:
        print_json(result.to_dict())
    else:
        style = {"created": "green", "updated": "yellow", "unchanged": "dim",
                 "failed": STATE_STYLE["failed"]}  # fmt: skip
        print_table(
            f"push to {result.url} (Grafana {result.grafana_version})",
            ["kind", "uid", "title", "result", "error"],
            [[i.kind, i.uid, i.title, state(i.action, style), i.error or ""]
             for i in result.items],
        )  # fmt: skip
        bad = sum(i.action == "failed" for i in result.items)
        out.print(f"{len(result.items) - bad} of {len(result.items)} items fine", highlight=False)
    if not result.ok:
        raise typer.Exit(1)
