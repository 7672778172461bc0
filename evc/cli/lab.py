"""`evc lab`: a local fleet of Docker-in-Docker nodes for trying and testing EVC."""

from __future__ import annotations

import typer

from evc.cli.context import workspace
from evc.cli.options import JSON

app = typer.Typer(
    help="A real fleet on this machine: Docker-in-Docker nodes with sshd.", no_args_is_help=True
)


def _lab():
    from evc.lab.fleet import Lab

    return Lab(workspace())


def _node_table(nodes, title: str):
    from evc.console import line, print_table, styled

    def yes_no(v):
        return "-" if v is None else (styled("ok", "green") if v else styled("no", "red"))

    print_table(
        title,
        ["node", "IP", "state", "SSH", "Docker", "CPU", "memory", "profile"],
        [
            [
                n.name,
                n.ip,
                n.state,
                yes_no(n.ssh_ok),
                yes_no(n.docker_ok),
                f"{n.cpus:g}",
                f"{n.mem_bytes / 2**30:g} GiB",
                n.profile,
            ]
            for n in nodes
        ],  # fmt: skip
    )
    for n in nodes:
        if n.message:
            line(styled(n.name, "red"), f": {n.message}")


@app.command()
def up(
    nodes: int = typer.Option(3, "--nodes", "-n", help="How many nodes the lab should have."),
    profile: list[str] = typer.Option(
        None,
        "--profile",
        "-p",
        help="Hardware profile(s), assigned to nodes in turn (a,b or repeated): rpi, nuc, orin "
        "(default: those "
        "three), rpi-arm64 (an arm64 userland under qemu; see the README), light (sshd and "
        "python only, no Docker engine: up to 50 on one machine).",
    ),
    subnet: str = typer.Option(None, help="Lab network (default from evc.yaml, 172.28.0.0/24)."),
    json: bool = JSON,
) -> None:
    """Build the images if needed and bring the lab to exactly N running nodes."""
    from evc.cli.progress import progress
    from evc.console import err, print_json
    from evc.lab.nodes import DEFAULT_PROFILES, validate_request

    from .output import print_run

    profile = [p for item in profile or [] for p in item.split(",")]  # -p a,b or -p a -p b
    validate_request(nodes, profile or list(DEFAULT_PROFILES))  # before touching Docker
    lab = _lab()
    shown = progress(json)
    with shown.task("bringing the lab up"):
        result = lab.up(nodes=nodes, profiles=profile or None, subnet=subnet, progress=shown)
    if json:
        print_json(result.to_dict())
    else:
        _node_table(result.nodes, f"lab {result.lab}: {result.network} {result.subnet}")
        print_run(result.ping)
        err.print(f"timings: {result.timings}", highlight=False)
    raise typer.Exit(result.exit_code)


@app.command()
def status(json: bool = JSON) -> None:
    """Each node: IP, SSH and Docker reachable (an Ansible run), CPU, memory, profile."""
    from dataclasses import asdict

    from evc.cli.progress import progress
    from evc.console import out, print_json

    lab = _lab()
    nodes = lab.status(progress=progress(json))
    if json:
        print_json([asdict(n) for n in nodes])
    elif not nodes:
        out.print(f"lab {lab.name!r} has no nodes; run `evc lab up`.")
    else:
        _node_table(nodes, f"lab {lab.name}")
    if any(not (n.ssh_ok and n.docker_ok) for n in nodes):
        raise typer.Exit(1)


@app.command()
def stop(node: str = typer.Argument(..., help="Node name, e.g. node2.")) -> None:
    """Stop one node (simulates a device failing)."""
    n = _lab().stop(node)
    typer.echo(f"{n.name}: {n.state}")


@app.command()
def start(node: str = typer.Argument(..., help="Node name, e.g. node2.")) -> None:
    """Start a stopped node and wait until SSH and its Docker engine answer."""
    n = _lab().start(node)
    typer.echo(f"{n.name}: {n.state}")


@app.command()
def down(
    purge: bool = typer.Option(False, help="Also remove the lab images and the lab SSH key."),
    json: bool = JSON,
) -> None:
    """Remove the lab's nodes, their volumes and its network."""
    from evc.console import print_json

    removed = _lab().down(purge=purge)
    if json:
        print_json(removed)
    else:
        for kind, names in removed.items():
            typer.echo(f"removed {len(names)} {kind}" + (f": {', '.join(names)}" if names else ""))
