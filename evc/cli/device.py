"""`evc device`: enrol devices, see them, check them."""

from __future__ import annotations

from pathlib import Path

import typer

from evc.cli.context import workspace

app = typer.Typer(
    help="Register devices, gather their facts, check they answer.", no_args_is_help=True
)

JSON = typer.Option(False, "--json", help="Print the result as JSON.")
TARGET = typer.Argument("all", help="Ansible pattern: host, group, or 'group:&other'.")


def _print_results(results, json: bool, title: str) -> None:
    from dataclasses import asdict

    from evc.console import STATE_STYLE, print_json, print_table

    if json:
        print_json([asdict(r) for r in results])
    else:
        rows = [
            [r.name, f"[{STATE_STYLE.get(r.state, '')}]{r.state}[/]", r.message or ""]
            for r in results
        ]
        print_table(title, ["device", "state", "message"], rows)
    if any(r.state in ("failed", "unreachable") for r in results):
        raise typer.Exit(1)


@app.command()
def add(
    name: str = typer.Argument(..., help="Device name (letters, digits, . _ -)."),
    host: str = typer.Option(..., "--host", help="IP address or DNS name."),
    port: int = typer.Option(22, help="SSH port."),
    user: str = typer.Option("root", help="SSH user."),
    group: list[str] = typer.Option(None, "--group", "-g", help="Group (repeatable)."),
    role: str = typer.Option("worker", help="builder or worker."),
    label: list[str] = typer.Option(None, "--label", "-l", help="KEY=VALUE (repeatable)."),
    lat: float = typer.Option(None, help="Latitude, for the fleet map."),
    lon: float = typer.Option(None, help="Longitude, for the fleet map."),
    copy_key: bool = typer.Option(
        False,
        "--copy-key",
        help="Install the controller's SSH key, logging in once with a "
        "password (prompted; never stored).",
    ),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="With --copy-key: read the password from stdin."
    ),
    json: bool = JSON,
) -> None:
    """Register a device: pin its SSH host key, gather its facts, add it to the inventory."""
    import sys

    from evc import devices

    password = None
    if copy_key:
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = typer.prompt(f"SSH password for {user}@{host}", hide_input=True)
    device = devices.from_options(name, host, port, user, group, role, label, lat, lon)
    results = devices.add(workspace(), [device], password=password, progress=not json)
    _print_results(results, json, f"device add {name}")


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="YAML list of devices, or CSV with a header row."),
    json: bool = JSON,
) -> None:
    """Register many devices at once; their facts are gathered in one parallel run."""
    from evc import devices

    batch = devices.load_file(file)
    _print_results(devices.add(workspace(), batch, progress=not json), json, f"import {file.name}")


@app.command("list")
def list_(
    group: str = typer.Option(None, "--group", "-g", help="Only devices in this group."),
    json: bool = JSON,
) -> None:
    """All devices with their facts and liveness."""
    from evc import devices
    from evc.console import ago, print_json, print_table

    rows = devices.list_devices(workspace(), group)
    if json:
        print_json(rows)
        return

    def mem(d):
        return f"{d['mem_bytes'] / 2**30:.1f} GiB" if d.get("mem_bytes") else "-"

    print_table(
        f"{len(rows)} devices",
        ["name", "host", "role", "groups", "arch", "CPU", "memory", "accel", "status", "last seen"],
        [
            [
                d["name"],
                f"{d['host']}:{d['port']}",
                d["role"],
                ",".join(d["groups"]),
                d.get("arch") or "-",
                f"{d['cpu_count']:g}" if d.get("cpu_count") else "-",
                mem(d),
                d.get("accelerator") or "-",
                d["status"],
                ago(d.get("last_seen")),
            ]  # fmt: skip
            for d in rows
        ],
    )


@app.command()
def show(name: str, json: bool = JSON) -> None:
    """One device, every field."""
    from evc import db, devices
    from evc.console import out, print_json

    ws = workspace()
    device = devices.get(db.workspace_db(ws), name)
    if json:
        print_json(device)
    else:
        for key, value in device.items():
            out.print(f"[bold]{key:>15}[/] {value}", highlight=False)


@app.command()
def remove(name: str) -> None:
    """Remove a device from the database and the inventory."""
    from evc import devices

    devices.remove(workspace(), name)
    typer.echo(f"removed {name}")


@app.command()
def facts(target: str = TARGET, json: bool = JSON) -> None:
    """Gather facts again (arch, OS, CPUs, memory, disk, Docker, accelerator)."""
    from evc import devices

    _print_results(devices.gather_facts(workspace(), target, progress=not json), json, "facts")


@app.command()
def ping(target: str = TARGET, json: bool = JSON) -> None:
    """Reach every targeted device in one parallel run; update last_seen and status."""
    from evc import devices

    _print_results(devices.ping(workspace(), target, progress=not json), json, "ping")
