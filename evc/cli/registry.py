"""`evc registry`: the private TLS registry the fleet pulls model images from."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="The private registry: certificates, credentials, container, API.", no_args_is_help=True
)

JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def _ws():
    from evc.config import Workspace

    return Workspace.find()


def _print_status(st, json: bool) -> None:
    from dataclasses import asdict

    from evc.console import out, print_json

    if json:
        print_json(asdict(st))
        return
    out.print(
        f"[bold]registry[/] https://{st.address}  ({st.container}: {st.state}, {st.image})",
        highlight=False,
    )
    out.print(
        f"certificate: {', '.join(st.cert['sans'])}; {st.cert['days_left']} days left "
        f"(CA: {st.ca['days_left']} days)",
        highlight=False,
    )
    out.print(f"repositories: {', '.join(st.repositories) or 'none'}", highlight=False)
    if st.error:
        out.print(f"[red]{st.error}[/]", highlight=False)


@app.command()
def init(
    host: list[str] = typer.Option(
        ...,
        "--host",
        help="Address the nodes use (repeatable; the first is the registry's address).",
    ),
    days: int = typer.Option(825, help="Server certificate lifetime in days."),
    port: int = typer.Option(5000, help="Registry port."),
    image: str = typer.Option("registry:2", help="Registry container image."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from stdin (else generated)."
    ),
) -> None:
    """Create the CA, the server certificate and the credentials (0600, never printed)."""
    import sys

    from evc import registry

    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    settings = registry.init(_ws(), host, days, password, port, image)
    typer.echo(
        f"registry initialised for https://{settings.address}; "
        f"credentials in .evc/registry/ (user {settings.user})"
    )


@app.command()
def up(
    image: str = typer.Option(None, help="Registry image (default: the one from init)."),
    json: bool = JSON,
) -> None:
    """Run the registry container (TLS, auth, deletes, persistent storage)."""
    from evc import registry

    _print_status(registry.up(_ws(), image), json)


@app.command()
def down(
    purge: bool = typer.Option(False, help="Also delete the stored images."), json: bool = JSON
) -> None:
    """Stop and remove the registry container."""
    from evc import registry
    from evc.console import print_json

    removed = registry.down(_ws(), purge)
    print_json(removed) if json else typer.echo(f"removed: {', '.join(removed) or 'nothing'}")


@app.command()
def status(json: bool = JSON) -> None:
    """Address, container state, certificate expiry and repositories."""
    from evc import registry

    st = registry.status(_ws())
    _print_status(st, json)
    if st.state != "running" or st.error:
        raise typer.Exit(1)


@app.command()
def rotate(
    days: int = typer.Option(825, help="New server certificate lifetime in days."),
    json: bool = JSON,
) -> None:
    """Issue a new server certificate from the same CA and restart the registry."""
    from evc import registry

    _print_status(registry.rotate(_ws(), days), json)
