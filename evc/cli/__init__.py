"""The `evc` command. Each sub-app parses options, calls one core function, prints.

Heavy libraries (docker, ansible, cryptography) are imported inside commands so
that `evc --help` stays fast.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer

from evc import __version__
from evc.cli import (
    cert,
    db,
    device,
    fleet,
    grafana,
    infer,
    inventory,
    lab,
    logs,
    model,
    queue,
    registry,
    run,
    token,
)
from evc.cli.monitor import monitor
from evc.cli.serve import serve

app = typer.Typer(
    name="evc",
    help="Edge Vision Cluster: run a fleet of edge AI devices from one controller.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(device.app, name="device")
app.add_typer(fleet.app, name="fleet")
app.add_typer(inventory.app, name="inventory")
app.add_typer(lab.app, name="lab")
app.add_typer(registry.app, name="registry")
app.add_typer(cert.app, name="cert")
app.add_typer(model.app, name="model")
app.add_typer(infer.app, name="infer")
app.add_typer(logs.app, name="logs")
app.add_typer(grafana.app, name="grafana")
app.add_typer(run.app, name="run")
app.add_typer(db.app, name="db")
app.add_typer(token.app, name="token")
app.add_typer(queue.app, name="queue")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"evc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Edge Vision Cluster: run a fleet of edge AI devices from one controller."""


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="Folder for the workspace."),
    name: str = typer.Option("default", help="Workspace name (names its inventory)."),
) -> None:
    """Create a workspace (evc.yaml, db/, inventories/) or keep an existing one."""
    from evc.config import init_workspace

    ws = init_workspace(directory, name)
    typer.echo(f"workspace {ws.name!r} at {ws.root}")


app.command("monitor")(monitor)
app.command("serve")(serve)


def main() -> None:
    from evc.errors import EVCError

    started = time.time()
    code = 0
    try:
        app()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if _by_ctrl_c(exc):  # typer turns a Ctrl-C into a silent exit 130
            code = _fail("interrupted", 130)
    except EVCError as exc:
        code = _fail(str(exc), exc.exit_code)
    except Exception as exc:  # a bug: one line, the traceback only when asked for
        from evc.engine import as_evc_error

        if os.environ.get("EVC_DEBUG"):
            raise
        known = as_evc_error(exc)
        if known is not None:
            code = _fail(str(known), known.exit_code)
        else:
            code = _fail(f"internal error: {type(exc).__name__}: {exc} (set EVC_DEBUG=1)", 1)
    _audit(sys.argv[1:], code, time.time() - started)
    sys.exit(code)


def _audit(args: list[str], code: int, duration: float) -> None:
    """Record the action in the workspace's audit log (commands that change or run things)."""
    if not args or args[0] in ("--help", "--version", "init") or "--help" in args:
        return
    from evc.cli.context import workspace

    ws = workspace(required=False)
    if ws is None:
        return  # no workspace: nothing to record in
    from evc.db import audit, workspace_db

    audit(
        workspace_db(ws),
        " ".join(a for a in args[:2] if not a.startswith("-")),
        args,
        code,
        duration,
        flags=_flags(args),
    )


def _flags(args: list[str]) -> set[str]:
    """The options on the path to the command in ``args`` that take no value, so that
    redaction knows the word after ``--copy-key`` is not that option's value."""
    cmd = typer.main.get_command(app)
    flags: set[str] = set()
    for word in ["", *args]:
        commands = getattr(cmd, "commands", {})  # a group (typer vendors its own click)
        if word and word not in commands:
            continue
        cmd = commands[word] if word else cmd
        for param in cmd.params:
            if getattr(param, "is_flag", False) or getattr(param, "count", False):
                flags.update(param.opts + param.secondary_opts)
    return flags


def _by_ctrl_c(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of ``exc``."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _fail(message: str, code: int) -> int:
    from evc.console import err, line, styled

    line(styled("error:", "bold red"), f" {message}", console=err, soft_wrap=True)
    return code
