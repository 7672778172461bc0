"""`evc queue`: EVC's own Redis, the work queue that pull-mode inference will use."""

from __future__ import annotations

import typer

from evc.cli.context import workspace
from evc.cli.options import JSON, command
from evc.cli.progress import progress
from evc.queue.server import UpOptions

app = typer.Typer(
    help="The work queue: EVC's own Redis (TLS only, one ACL user per device).",
    no_args_is_help=True,
)


def _print_status(st, json: bool) -> None:
    from dataclasses import asdict

    from evc.console import line, out, print_json, styled

    if json:
        print_json({**asdict(st), "ok": st.ok})
        return
    state = styled(st.state, "green" if st.ok else "yellow")
    pid = f", pid {st.pid}" if st.pid else ""
    version = f", redis {st.version}" if st.version else ""
    line(styled("queue", "bold"), f" rediss://{st.address}  (", state, f"{pid}{version})")
    if st.state == "running" and not st.error:
        devices = [u for u in st.users if u not in ("default", "evc-admin")]
        out.print(f"users: evc-admin and {len(devices)} devices", highlight=False)
        streams = ", ".join(f"{k} ({n})" for k, n in sorted(st.streams.items()))
        out.print(f"streams: {streams or 'none'}", highlight=False, soft_wrap=True)
    if st.error:
        out.print(st.error, style="red", highlight=False, soft_wrap=True)


@command(app, UpOptions)
def up(options: UpOptions, json: bool = JSON) -> None:
    """Start EVC's Redis (TLS only, ACL users per device) or keep it running."""
    from evc.queue import server

    st = server.up(workspace(), options, progress(json))
    _print_status(st, json)
    raise typer.Exit(st.exit_code)


@app.command()
def down(json: bool = JSON) -> None:
    """Stop EVC's Redis (its data stays in .evc/queue/data)."""
    from dataclasses import asdict

    from evc.console import print_json
    from evc.queue import server

    result = server.down(workspace())
    if json:
        print_json(asdict(result))
    else:
        typer.echo(f"stopped redis-server (pid {result.pid})" if result.stopped else "not running")
    raise typer.Exit(result.exit_code)


@app.command()
def status(json: bool = JSON) -> None:
    """Running or stopped, address, version, users, job streams (exit 1 unless running)."""
    from evc.queue import server

    st = server.status(workspace())
    _print_status(st, json)
    raise typer.Exit(st.exit_code)
