"""`evc device`: enrol devices, see them, check them."""

from __future__ import annotations

import typer

from evc.cli.context import workspace
from evc.cli.options import JSON, command
from evc.cli.progress import progress
from evc.devices import AddOptions, FactsOptions, ImportOptions, PingOptions, RemoveOptions

app = typer.Typer(
    help="Register devices, gather their facts, check they answer.", no_args_is_help=True
)


def _print_results(result, json: bool, title: str) -> None:
    from evc.console import print_json, print_table, state

    if json:
        print_json(result.to_dict())
    else:
        rows = [
            [r.name, state(r.state), r.message or ""]
            for r in result.devices
        ]  # fmt: skip
        print_table(title, ["device", "state", "message"], rows)
    raise typer.Exit(result.exit_code)


@command(app, AddOptions)
def add(
    options: AddOptions,
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

    device = options.device()
    password = None
    if copy_key:
        if password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = typer.prompt(
                f"SSH password for {device.user}@{device.host}", hide_input=True
            )
    result = devices.add(workspace(), [device], password=password, progress=progress(json))
    _print_results(result, json, f"device add {device.name}")


@command(app, ImportOptions, "import")
def import_(options: ImportOptions, json: bool = JSON) -> None:
    """Register many devices at once; their facts are gathered in one parallel run."""
    from evc import devices

    batch = devices.load_file(options.file)
    result = devices.add(workspace(), batch, progress=progress(json))
    _print_results(result, json, f"import {options.file.name}")


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
    from evc.console import line, print_json, styled

    ws = workspace()
    device = devices.get(db.workspace_db(ws), name)
    if json:
        print_json(device)
    else:
        for key, value in device.items():
            line(styled(f"{key:>15}", "bold"), f" {value}")


@command(app, RemoveOptions)
def remove(options: RemoveOptions) -> None:
    """Remove a device from the database and the inventory."""
    from evc import devices

    devices.remove(workspace(), options.name)
    typer.echo(f"removed {options.name}")


@command(app, FactsOptions)
def facts(options: FactsOptions, json: bool = JSON) -> None:
    """Gather facts again (arch, OS, CPUs, memory, disk, Docker, accelerator)."""
    from evc import devices

    result = devices.gather_facts(workspace(), options.target, progress=progress(json))
    _print_results(result, json, "facts")


@command(app, PingOptions)
def ping(options: PingOptions, json: bool = JSON) -> None:
    """Reach every targeted device in one parallel run; update last_seen and status."""
    from evc import devices

    _print_results(devices.ping(workspace(), options.target, progress=progress(json)), json, "ping")
