"""`evc model`: build model images, push them, and keep the catalogue."""

from __future__ import annotations

import typer

from evc.cli.context import workspace
from evc.cli.options import JSON, command
from evc.cli.progress import progress
from evc.model.build import BuildOptions
from evc.model.deploy import DeployOptions, RollbackOptions, UndeployOptions
from evc.model.publish import PushOptions

app = typer.Typer(
    help="Model images and the catalogue: build, push, list, show, delete.",
    no_args_is_help=True,
)

REF = typer.Argument(..., help="NAME:VERSION")
VERBOSE = typer.Option(False, "--verbose", "-V", help="Show the whole build log.")
TRUST_WEIGHTS = typer.Option(
    False,
    "--trust-weights",
    help="Export pickled .pt weights even when they are not your own file (loading a .pt "
    "runs code inside it).",
)


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.0f} MB"


def _print_model(m, json: bool) -> None:
    from evc.console import line, print_json, styled

    if json:
        print_json(m.to_dict())
        return
    registry = _in_registry(m)
    rows = [
        ("image", m.image),
        ("runtime / task / arch", f"{m.runtime} / {m.task} / {m.arch}"),
        ("owner", m.owner or "-"),
        ("size", f"{_size(m.size_bytes)} local, {_size(m.pushed_size)} in the registry"),
        ("weights", f"{m.weights_source or 'built in'} {m.weights_digest or ''}".strip()),
        ("registry digest", m.registry_digest or "not pushed"),
        ("in registry", registry),
        ("deployed on", ", ".join(m.deployed_on or []) or "-"),
        ("built on", m.built_on or "-"),
        ("selftest", ", ".join(f"{k}={v}" for k, v in (m.selftest or {}).items())),
    ]
    if m.index_digest:
        rows.append(("index (version tag)", m.index_digest))
    for v in m.variants or []:
        if v["arch"] != m.arch:
            rows.append(
                (f"variant {v['arch']}", f"{v['image']} {v['registry_digest'] or 'not pushed'}")
            )
    line(styled(f"{m.ref} ({m.arch})", "bold"))
    for key, value in rows:
        line(f"  {key:22} ", value)


def _print_models(models, json: bool) -> None:
    """Each variant of a version, as built or pushed (JSON: catalogue.summary)."""
    from evc.console import print_json
    from evc.model import catalogue

    if json:
        print_json(catalogue.summary(models))
        return
    for m in models:
        _print_model(m, json)


def _in_registry(m):
    from evc.console import styled

    return {True: "yes", False: styled("MISSING", "red"), None: "-"}[m.in_registry]


@command(app, BuildOptions)
def build(
    options: BuildOptions,
    trust_weights: bool = TRUST_WEIGHTS,
    json: bool = JSON,
    verbose: bool = VERBOSE,
) -> None:
    """Build a model image per arch, run its selftest, tag it REGISTRY/evc/NAME:VERSION-ARCH.

    .pt weights are exported to ONNX here with ultralytics, which unpickles them: that runs
    any code inside the file. A .pt that is not your own file is refused unless
    --trust-weights.
    """
    from evc.model import build as b

    models = b.build(workspace(), options, progress(json, verbose), trust_weights=trust_weights)
    _print_models(models, json)


@command(app, PushOptions)
def push(options: PushOptions, json: bool = JSON) -> None:
    """Push every arch of a built model, then its image index; records digests and sizes."""
    from evc.model import publish

    _print_models(publish.push(workspace(), options, progress(json)), json)


@app.command("list")
def list_(json: bool = JSON) -> None:
    """The catalogue, checked against the registry."""
    from evc.console import err, print_json, print_table
    from evc.model import catalogue

    models, warning = catalogue.list_models(workspace())
    if warning:
        err.print(warning, style="yellow", highlight=False)
    if json:
        print_json([m.to_dict() for m in models])
        return
    print_table(
        "models",
        ["model", "runtime", "task", "arch", "owner", "size", "digest", "built", "in registry",
         "deployed on"],
        [
            [
                m.ref, m.runtime, m.task, m.arch, m.owner or "-",
                _size(m.pushed_size or m.size_bytes),
                (m.registry_digest or "not pushed")[:19],
                _when(m.built_at), _in_registry(m), ", ".join(m.deployed_on or []) or "-",
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
        err.print(warning, style="yellow", highlight=False)
    _print_model(model, json)


@app.command()
def delete(
    ref: str = REF,
    force: bool = typer.Option(False, help="Delete even while the version is deployed."),
    json: bool = JSON,
) -> None:
    """Delete the version (every arch, its index) in the registry, collect garbage, remove
    its catalogue rows."""
    from evc.console import print_json
    from evc.model import publish

    model = publish.delete(workspace(), ref, force=force, progress=progress(json))
    if json:
        print_json({"deleted": model.ref, "image": model.image})
    else:
        typer.echo(f"deleted {model.ref} ({model.image})")


def _report(result, json: bool) -> None:
    from evc.console import line, print_json, styled

    from .output import print_run

    if json:
        print_json(result.to_dict())
    else:
        print_run(result.run)
        if result.rollback:
            back = ", ".join(f"{h} to {v}" for h, v in sorted(result.rolled_back.items()))
            line(styled("rolled back", "yellow"), f" {back}")
            print_run(result.rollback)
    raise typer.Exit(result.exit_code)


@command(app, DeployOptions)
def deploy(options: DeployOptions, json: bool = JSON) -> None:
    """Pull NAME:VERSION and run its container on the nodes; health-checked, idempotent."""
    from evc.model import deploy as d

    _report(d.deploy(workspace(), options, progress(json)), json)


@command(app, UndeployOptions)
def undeploy(options: UndeployOptions, json: bool = JSON) -> None:
    """Remove the model's container from the nodes (the image stays for rollback)."""
    from evc.model import deploy as d

    _report(d.undeploy(workspace(), options, progress(json)), json)


@command(app, RollbackOptions)
def rollback(options: RollbackOptions, json: bool = JSON) -> None:
    """Put each node back on the version it ran before its current one."""
    from evc.model import deploy as d

    _report(d.rollback(workspace(), options, progress(json)), json)
