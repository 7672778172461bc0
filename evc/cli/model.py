"""`evc model`: build model images, push them, and keep the catalogue."""

from __future__ import annotations

from pathlib import Path

import typer

from evc.cli.context import workspace

app = typer.Typer(
    help="Model images and the catalogue: build, push, list, show, delete.",
    no_args_is_help=True,
)

JSON = typer.Option(False, "--json", help="Print the result as JSON.")
REF = typer.Argument(..., help="NAME:VERSION")


def _log(json: bool):
    from evc.console import err

    return (lambda _msg: None) if json else (lambda msg: err.print(msg, highlight=False))


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.0f} MB"


def _print_model(m, json: bool) -> None:
    from evc.console import out, print_json

    if json:
        print_json(m.to_dict())
        return
    registry = {True: "yes", False: "[red]MISSING[/]", None: "-"}[m.in_registry]
    rows = [
        ("image", m.image),
        ("runtime / task / arch", f"{m.runtime} / {m.task} / {m.arch}"),
        ("owner", m.owner or "-"),
        ("size", f"{_size(m.size_bytes)} local, {_size(m.pushed_size)} in the registry"),
        ("weights", f"{m.weights_source or 'built in'} {m.weights_digest or ''}".strip()),
        ("registry digest", m.registry_digest or "not pushed"),
        ("in registry", registry),
        ("deployed on", ", ".join(m.deployed_on or []) or "-"),
        ("selftest", ", ".join(f"{k}={v}" for k, v in (m.selftest or {}).items())),
    ]
    out.print(f"[bold]{m.ref}[/]", highlight=False)
    for key, value in rows:
        out.print(f"  {key:22} {value}", highlight=False)


@app.command()
def build(
    name: str = typer.Argument(..., help="Model name (lower case), e.g. faces."),
    runtime: str = typer.Option(..., "--runtime", "-r", help="A folder of model_images/."),
    version: str = typer.Option(..., "--version", "-v", help="Version, e.g. 1.0."),
    weights: Path = typer.Option(None, help="Weights: .onnx, or YOLO .pt/.yaml to export."),
    arch: str = typer.Option(None, help="amd64 or arm64 (default: this builder's)."),
    owner: str = typer.Option(None, help="Owner recorded in the catalogue and labels."),
    task: str = typer.Option(None, help="Task; must match the runtime's (detect)."),
    base_image: str = typer.Option(None, help="Base image with python3 (default: built here)."),
    force: bool = typer.Option(False, help="Rebuild a version already in the catalogue."),
    json: bool = JSON,
) -> None:
    """Build a model image, run its selftest, tag it REGISTRY/evc/NAME:VERSION-ARCH."""
    from evc.model import build as b

    model = b.build(
        workspace(), name, runtime, version, weights, arch, owner, task, base_image, force,
        log=_log(json),
    )  # fmt: skip
    _print_model(model, json)


@app.command()
def push(ref: str = REF, json: bool = JSON) -> None:
    """Push a built model to the registry; records its digest and size."""
    from evc.model import publish

    _print_model(publish.push(workspace(), ref, log=_log(json)), json)


@app.command("list")
def list_(json: bool = JSON) -> None:
    """The catalogue, checked against the registry."""
    from evc.console import err, print_json, print_table
    from evc.model import catalogue

    models, warning = catalogue.list_models(workspace())
    if warning:
        err.print(f"[yellow]{warning}[/]", highlight=False)
    if json:
        print_json([m.to_dict() for m in models])
        return
    flag = {True: "yes", False: "[red]MISSING[/]", None: "-"}
    print_table(
        "models",
        ["model", "runtime", "task", "arch", "owner", "size", "digest", "built", "in registry",
         "deployed on"],
        [
            [
                m.ref, m.runtime, m.task, m.arch, m.owner or "-",
                _size(m.pushed_size or m.size_bytes),
                (m.registry_digest or "not pushed")[:19],
                _when(m.built_at), flag[m.in_registry], ", ".join(m.deployed_on or []) or "-",
            ]
            for m in models
        ],
    )  # fmt: skip


def _when(ts: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@app.command()
def show(ref: str = REF, json: bool = JSON) -> None:
    """One catalogue entry, checked against the registry."""
    from evc.console import err
    from evc.model import catalogue

    model, warning = catalogue.show(workspace(), ref)
    if warning:
        err.print(f"[yellow]{warning}[/]", highlight=False)
    _print_model(model, json)


@app.command()
def delete(
    ref: str = REF,
    force: bool = typer.Option(False, help="Delete even while the version is deployed."),
    json: bool = JSON,
) -> None:
    """Delete the tag in the registry, collect garbage, remove the catalogue entry."""
    from evc.console import print_json
    from evc.model import publish

    model = publish.delete(workspace(), ref, force, log=_log(json))
    if json:
        print_json({"deleted": model.ref, "image": model.image})
    else:
        typer.echo(f"deleted {model.ref} ({model.image})")


TARGET = typer.Argument(..., help="Ansible pattern: host, group, or 'group:&other'.")


def _report(result, json: bool) -> None:
    from evc.console import out, print_json

    from .output import exit_for, print_run

    if json:
        print_json(result.to_dict())
    else:
        print_run(result.run)
        if result.rollback:
            out.print("[yellow]rolled back[/] " + ", ".join(
                f"{h} to {v}" for h, v in sorted(result.rolled_back.items())
            ), highlight=False)  # fmt: skip
            print_run(result.rollback)
    exit_for(result.run)


@app.command()
def deploy(
    ref: str = REF,
    target: str = TARGET,
    serial: str = typer.Option(None, help="Roll out in batches: a count (2) or a share (25%)."),
    max_fail_percent: int = typer.Option(
        100, help="Stop the rollout when more than this share of a batch fails."
    ),
    rollback_on_failure: bool = typer.Option(
        False, help="If the rollout fails, put the nodes it touched back on their old version."
    ),
    cpus: float = typer.Option(None, help="CPU limit of the model container."),
    memory: str = typer.Option(None, help="Memory limit of the model container, e.g. 512m."),
    json: bool = JSON,
) -> None:
    """Pull NAME:VERSION and run its container on the nodes; health-checked, idempotent."""
    from evc.model import deploy as d

    result = d.deploy(
        workspace(), ref, target, serial, max_fail_percent, rollback_on_failure, cpus, memory,
        progress=not json,
    )  # fmt: skip
    _report(result, json)


@app.command()
def undeploy(
    name: str = typer.Argument(..., help="Model name."), target: str = TARGET, json: bool = JSON
) -> None:
    """Remove the model's container from the nodes (the image stays for rollback)."""
    from evc.model import deploy as d

    _report(d.undeploy(workspace(), name, target, progress=not json), json)


@app.command()
def rollback(
    name: str = typer.Argument(..., help="Model name."), target: str = TARGET, json: bool = JSON
) -> None:
    """Put each node back on the version it ran before its current one."""
    from evc.model import deploy as d

    _report(d.rollback(workspace(), name, target, progress=not json), json)
