"""`evc cert`: make the nodes trust the private registry, or stop trusting it."""

from __future__ import annotations

import typer

from evc.cli.context import workspace

app = typer.Typer(help="Registry CA on the nodes: push, revoke, check.", no_args_is_help=True)

JSON = typer.Option(False, "--json", help="Print the result as JSON.")
TARGET = typer.Argument("all", help="Ansible pattern: host, group, or 'group:&other'.")


def _report(run, json: bool) -> None:
    from evc.console import print_json

    from .output import exit_for, print_run

    print_json(run.to_dict()) if json else print_run(run)
    exit_for(run)


@app.command()
def push(
    target: str = TARGET,
    system_trust: bool = typer.Option(False, help="Also add the CA to the system trust store."),
    json: bool = JSON,
) -> None:
    """Put the CA in Docker's certs.d, log in (no_log), verify by a pull; per host, why not."""
    from evc import certs

    _report(certs.push(workspace(), target, system_trust, progress=not json), json)


@app.command()
def revoke(target: str = TARGET, json: bool = JSON) -> None:
    """Remove the CA and the login; succeeds only where a pull then fails."""
    from evc import certs

    _report(certs.revoke(workspace(), target, progress=not json), json)


@app.command()
def check(target: str = TARGET, json: bool = JSON) -> None:
    """Per node: trusts the current CA? Registry verified over TLS (else why)? Cert days left."""
    from dataclasses import asdict

    from evc import certs
    from evc.console import print_json, print_table

    results = certs.check(workspace(), target, progress=not json)
    if json:
        print_json([asdict(r) for r in results])
    else:
        print_table(
            "registry trust",
            ["host", "state", "trusts current CA", "server cert days left", "message"],
            [[r.host, r.state, {True: "yes", False: "[red]no[/]", None: "-"}[r.trusts_current_ca],
              str(r.server_cert_days_left), r.message or ""] for r in results],
        )  # fmt: skip
    if any(r.state != "ok" or not r.trusts_current_ca for r in results):
        raise typer.Exit(1)
