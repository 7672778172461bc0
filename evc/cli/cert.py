"""`evc cert`: make the nodes trust the private registry, or stop trusting it."""

from __future__ import annotations

import typer

from evc.certs import CheckOptions, PushOptions, RevokeOptions
from evc.cli.context import workspace
from evc.cli.options import JSON, command
from evc.cli.progress import progress

app = typer.Typer(help="Registry CA on the nodes: push, revoke, check.", no_args_is_help=True)


def _report(run, json: bool) -> None:
    from evc.console import print_json

    from .output import print_run

    print_json(run.to_dict()) if json else print_run(run)
    raise typer.Exit(run.exit_code)


@command(app, PushOptions)
def push(options: PushOptions, json: bool = JSON) -> None:
    """CA in Docker's certs.d, log in with the node's own pull credential (no_log), verify by
    a pull; per host, why not."""
    from evc import certs

    _report(certs.push(workspace(), options, progress(json)), json)


@command(app, RevokeOptions)
def revoke(options: RevokeOptions, json: bool = JSON) -> None:
    """Delete the nodes' pull credentials (refused at once), remove the CA and the login;
    succeeds only where a pull then fails."""
    from evc import certs

    _report(certs.revoke(workspace(), options, progress(json)), json)


@command(app, CheckOptions)
def check(options: CheckOptions, json: bool = JSON) -> None:
    """Per node: trusts the current CA? Read-only endpoint verified over TLS (else why)? Pull
    credential? Cert days left."""
    from evc import certs
    from evc.console import print_json, print_table, styled

    result = certs.check(workspace(), options, progress(json))
    if json:
        print_json(result.to_dict())
    else:
        yes = {True: "yes", False: styled("no", "red"), None: "-"}
        endpoint = result.checks[0].endpoint if result.checks else "-"
        print_table(
            f"registry trust (nodes pull from https://{endpoint})",
            ["host", "state", "trusts current CA", "pull credential", "server cert days left",
             "message"],
            [[r.host, r.state, yes[r.trusts_current_ca], yes[r.pull_credential],
              str(r.server_cert_days_left), r.message or ""] for r in result.checks],
        )  # fmt: skip
    raise typer.Exit(result.exit_code)
