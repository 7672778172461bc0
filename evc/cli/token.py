"""`evc token`: bearer tokens for `evc serve` (create, list, revoke)."""

from __future__ import annotations

import typer

from evc.api.tokens import CreateOptions
from evc.cli.context import workspace
from evc.cli.options import JSON, command

app = typer.Typer(
    help="API tokens for `evc serve`: shown once, stored only as a hash.", no_args_is_help=True
)


def _when(t: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


@command(app, CreateOptions)
def create(options: CreateOptions, json: bool = JSON) -> None:
    """Create an API token for `evc serve`: printed once, stored only as a hash."""
    from evc.api import tokens
    from evc.console import err, print_json

    secret, token = tokens.create(workspace(), options)
    if json:
        print_json({**token.to_dict(), "token": secret})
        return
    typer.echo(secret)
    err.print(
        f"token {token.name!r} ({token.role}, expires {_when(token.expires)}): copy it now, "
        "it is not shown again. Send it as `Authorization: Bearer TOKEN`.",
        highlight=False,
    )


@app.command("list")
def list_(json: bool = JSON) -> None:
    """Tokens by name: role, state, created, expires, last used (never the secret)."""
    from evc.api import tokens
    from evc.console import print_json, print_table

    rows = tokens.list_tokens(workspace())
    if json:
        print_json([t.to_dict() for t in rows])
        return
    print_table(
        "API tokens",
        ["name", "role", "state", "created", "expires", "last used"],
        [[t.name, t.role, t.state, _when(t.created), _when(t.expires), _when(t.last_used)]
         for t in rows],
    )  # fmt: skip


@app.command()
def revoke(name: str = typer.Argument(..., help="Token name."), json: bool = JSON) -> None:
    """Revoke a token: the API refuses it (401) from its next request."""
    from evc.api import tokens
    from evc.console import out, print_json

    token = tokens.revoke(workspace(), name)
    if json:
        print_json(token.to_dict())
    else:
        out.print(f"token {token.name!r} revoked", highlight=False)
