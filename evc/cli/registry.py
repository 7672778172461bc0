"""`evc registry`: the private TLS registry the fleet pulls model images from."""

from __future__ import annotations

import typer

from evc.cli.context import workspace
from evc.cli.options import JSON, command
from evc.cli.progress import progress
from evc.registry_server import UpOptions

app = typer.Typer(
    help="The private registry: certificates, credentials, container, API.", no_args_is_help=True
)


def _print_status(st, json: bool) -> None:
    from dataclasses import asdict

    from evc.console import line, out, print_json, styled

    if json:
        print_json(asdict(st))
        return
    ro = st.read_only
    line(styled("registry", "bold"), f" https://{st.address}  ({st.container}: {st.state}, "
         f"{st.image}); read-write, the controller's alone")  # fmt: skip
    devices = f" ({', '.join(ro.devices)})" if 0 < len(ro.devices) <= 10 else ""
    line(styled("read-only", "bold"), f" https://{ro.address}  ({ro.container}: {ro.state}); "
         f"the nodes pull here: {len(ro.devices)} device credentials{devices}")  # fmt: skip
    out.print(
        f"certificate: {', '.join(st.cert['sans'])}; {st.cert['days_left']} days left "
        f"(CA: {st.ca['days_left']} days)",
        highlight=False,
    )
    out.print(f"repositories: {', '.join(st.repositories) or 'none'}", highlight=False)
    if st.next_ca:
        out.print(
            f"a rotation to a new CA ({st.next_ca['subject']}) is under way: finish it "
            "with `evc registry rotate --new-ca`",
            style="yellow",
            highlight=False,
            soft_wrap=True,
        )
    for error in (st.error, ro.error):
        if error:
            out.print(error, style="red", highlight=False)


@app.command()
def init(
    host: list[str] = typer.Option(
        ...,
        "--host",
        help="Address the nodes use (repeatable; the first is the registry's address).",
    ),
    days: int = typer.Option(825, help="Server certificate lifetime in days."),
    port: int = typer.Option(5000, help="Port of the read-write endpoint (the controller's)."),
    ro_port: int | None = typer.Option(
        None,
        "--ro-port",
        help="Port of the read-only endpoint the nodes pull from (default: --port + 1).",
    ),
    image: str = typer.Option("registry:2", help="Registry container image."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from stdin (else generated)."
    ),
) -> None:
    """Create the CA, the server certificate and the credentials (0600, never printed)."""
    import sys

    from evc import registry

    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    settings = registry.init(
        workspace(), host, days=days, password=password, port=port, ro_port=ro_port,
        image=image,
    )  # fmt: skip
    typer.echo(
        f"registry initialised for https://{settings.address} (nodes pull from "
        f"https://{settings.ro_address}); credentials in .evc/registry/ (user {settings.user})"
    )


@command(app, UpOptions)
def up(options: UpOptions, json: bool = JSON) -> None:
    """Run the registry container (TLS, auth, deletes, persistent storage)."""
    from evc import registry_server

    _print_status(registry_server.up(workspace(), options.image), json)


@app.command()
def down(
    purge: bool = typer.Option(
        False, help="Also delete the stored images, their local tags and the controller's trust."
    ),
    json: bool = JSON,
) -> None:
    """Stop and remove the registry container."""
    from evc import registry_server
    from evc.console import print_json

    removed = registry_server.down(workspace(), purge=purge)
    print_json(removed) if json else typer.echo(f"removed: {', '.join(removed) or 'nothing'}")


@app.command()
def status(json: bool = JSON) -> None:
    """Both endpoints (read-write, read-only), certificate expiry, repositories, pull
    credentials."""
    from evc import registry_server

    st = registry_server.status(workspace())
    _print_status(st, json)
    if not st.healthy:
        raise typer.Exit(1)


@app.command()
def rotate(
    days: int = typer.Option(825, help="New server certificate lifetime in days."),
    new_ca: bool = typer.Option(
        False,
        "--new-ca",
        help="Move to a new CA as well, on every enrolled device: the new CA is pushed next "
        "to the old one, then the registry switches, then the old CA is removed; each step "
        "is verified by a real pull on every node. A stopped rotation resumes when run again.",
    ),
    new_password: bool = typer.Option(
        False,
        "--password",
        help="Only a new read-write password for the controller (generated): the old one "
        "stops working. Nodes are not concerned: they pull with their own credentials.",
    ),
    json: bool = JSON,
) -> None:
    """New server certificate, same CA; --new-ca: registry and nodes to a new CA, no pull
    lost; --password: a new controller password."""
    if new_password:
        from evc import registry_server
        from evc.errors import UsageError

        if new_ca:
            raise UsageError("--password and --new-ca are separate rotations: run one at a time.")
        _print_status(registry_server.rotate_password(workspace()), json)
        return
    if not new_ca:
        from evc import registry_server

        _print_status(registry_server.rotate(workspace(), days=days), json)
        return
    from evc import certs

    result = certs.rotate_ca(workspace(), days=days, progress=progress(json))
    _print_rotation(result, json)
    raise typer.Exit(result.exit_code)


def _print_rotation(result, json: bool) -> None:
    """Per host, its state in each phase and the last message; then the phases and what is next."""
    from dataclasses import asdict

    from evc.certs import PHASES
    from evc.console import line, out, print_json, print_table, state, styled

    if json:
        print_json({**asdict(result), "ok": result.ok})
        return
    rows = []
    for host in result.targets:
        ran = [p.hosts[host] for p in result.phases if host in p.hosts]
        cells = [state(r["state"]) for r in ran]
        message = next((r["message"] for r in reversed(ran) if r["message"]), "")
        rows.append([host, *cells, *["-"] * (len(PHASES) - len(ran)), message])
    mode = "resumed" if result.resumed else "new CA"
    print_table(f"registry rotate --new-ca ({mode})", ["host", *PHASES, "message"], rows)
    for p in result.phases:
        note = f" ({p.note})" if p.note else ""
        out.print(f"{p.name}: {p.title}: {p.status} in {p.duration_s} s{note}", highlight=False)
    if result.status == "complete":
        new, old = result.new_ca, result.old_ca
        line(
            styled("done", "green"),
            f": the registry and {len(result.targets) - len(result.unreachable)} "
            f"nodes use the new CA {new['subject']} (sha256 {new['sha256'][:16]}…); "
            f"the old CA (sha256 {old['sha256'][:16]}…) is removed",
            soft_wrap=True,
        )
    for step in result.next_steps:
        out.print(step, style="yellow", highlight=False, soft_wrap=True)
