"""The `evc` command. Each sub-app parses options, calls one core function, prints.

A command's module is imported only when that command runs (:data:`LAZY`), and heavy
libraries (docker, ansible, cryptography) only inside commands, so that starting
`evc` costs little.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

import typer
from typer.core import TyperGroup

from evc import __version__

# The commands after `init`, in the order `evc --help` lists them, each in the module
# evc.cli.NAME (a group `app`, or the command function NAME). A module is imported
# when its command runs (or for --help), not on every start: importing all of them
# cost each `evc` call about 0.3 s more than one (bench/cli_startup.py).
LAZY = ("monitor", "serve", "device", "fleet", "inventory", "lab", "registry", "cert", "model",
        "infer", "logs", "grafana", "run", "db", "token", "queue")  # fmt: skip


class _Lazy(TyperGroup):
    """The root group: builds a command from its module on first use."""

    def list_commands(self, ctx) -> list[str]:
        return [*super().list_commands(ctx), *LAZY]

    def get_command(self, ctx, cmd_name: str):
        if cmd_name in LAZY and cmd_name not in self.commands:
            module = importlib.import_module(f"evc.cli.{cmd_name}")
            if hasattr(module, "app"):
                command = typer.main.get_group(module.app)
            else:  # one command: a Typer of one command is that command
                one = typer.Typer(add_completion=False)
                one.command(cmd_name)(getattr(module, cmd_name))
                command = typer.main.get_command(one)
            command.name = cmd_name
            self.commands[cmd_name] = command
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="evc",
    help="Edge Vision Cluster: run a fleet of edge AI devices from one controller.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=_Lazy,
)


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
        if word:  # a group's command (typer vendors its own click), or not a command word
            sub = cmd.get_command(None, word) if hasattr(cmd, "get_command") else None
            if sub is None:
                continue
            cmd = sub
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
