"""What a run-config step can do: each kind is one CLI command, with the same options.

A kind's options are read from its Typer command in ``evc/cli/`` (names, types,
defaults, help), so a step and the command cannot drift apart; the runner below
that carries out the kind takes exactly those options as parameters (a unit test
holds the two together). Kinds whose command is not there yet take the runner's
own parameters.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, create_model

from evc.config import Workspace

REQUIRED = ...
# kind -> (evc.cli module, command name)
COMMANDS: dict[str, tuple[str, str]] = {
    "device.add": ("device", "add"),
    "device.import": ("device", "import"),
    "device.check": ("device", "ping"),
    "device.facts": ("device", "facts"),
    "device.remove": ("device", "remove"),
    "registry.up": ("registry", "up"),
    "cert.push": ("cert", "push"),
    "cert.revoke": ("cert", "revoke"),
    "cert.check": ("cert", "check"),
    "model.build": ("model", "build"),
    "model.push": ("model", "push"),
    "model.deploy": ("model", "deploy"),
    "model.undeploy": ("model", "undeploy"),
    "model.rollback": ("model", "rollback"),
    "infer.run": ("infer", "run"),
    "logs.collect": ("logs", "collect"),
    "grafana.build": ("grafana", "build"),
}
# Command parameters a step does not take, and why.
NOT_OPTIONS = {
    "json": "output only: `evc run --json` prints the whole run as JSON",
    "copy_key": "asks for an SSH password; enrol with keys, or run `evc device add --copy-key`",
    "password_stdin": "reads a password from stdin",
}
# Path options a command writes to (all other paths must exist when the file is checked).
OUTPUT_PATHS = {"out"}
# A step's `target` is the command's own target parameter.
TARGET = "target"


@dataclass(frozen=True)
class Param:
    name: str
    annotation: Any
    default: Any  # REQUIRED when it must be given
    help: str = ""
    flag: str | None = None  # None for a positional argument

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass
class Outcome:
    """What one step did: ok or not, one line for people, details for the database."""

    ok: bool
    summary: str
    detail: Any = None
    hosts: dict[str, str] = field(default_factory=dict)  # host -> ok/changed/failed/...


# --------------------------------------------------------------------- options


def _command(kind: str) -> Callable | None:
    """The Typer command function of ``kind``, or None while its CLI module does not exist."""
    group, name = COMMANDS[kind]
    try:
        module = importlib.import_module(f"evc.cli.{group}")
    except ModuleNotFoundError as exc:
        if exc.name != f"evc.cli.{group}":
            raise
        return None
    for info in module.app.registered_commands:
        if (info.name or info.callback.__name__.replace("_", "-")) == name:
            return info.callback
    raise LookupError(f"evc {group} has no command {name!r} (capabilities.COMMANDS[{kind!r}])")


def _cli_params(func: Callable) -> list[Param]:
    import typer.models

    hints = typing.get_type_hints(func)
    out = []
    for p in inspect.signature(func).parameters.values():
        if p.name in NOT_OPTIONS:
            continue
        info = p.default
        if not isinstance(info, typer.models.ParameterInfo):  # a plain `name: str` argument
            default = REQUIRED if info is inspect.Parameter.empty else info
            out.append(Param(p.name, hints[p.name], default))
            continue
        flag = None
        if isinstance(info, typer.models.OptionInfo):
            decls = [d for d in (info.param_decls or ()) if d.startswith("--")]
            flag = decls[0].split("/")[0] if decls else "--" + p.name.replace("_", "-")
        out.append(Param(p.name, hints[p.name], info.default, info.help or "", flag))
    return out


def _runner_params(func: Callable) -> list[Param]:
    hints = typing.get_type_hints(func)
    return [
        Param(p.name, hints.get(p.name, Any), p.default, flag="--" + p.name.replace("_", "-"))
        for p in inspect.signature(func).parameters.values()
        if p.name not in ("ws", "progress")
    ]


@functools.cache
def params(kind: str) -> tuple[Param, ...]:
    """Every option of ``kind`` (``target`` included when the command has one)."""
    command = _command(kind)
    return tuple(_cli_params(command) if command else _runner_params(RUNNERS[kind]))


def target_param(kind: str) -> Param | None:
    return next((p for p in params(kind) if p.name == TARGET), None)


def _int_as_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


@functools.cache
def option_model(kind: str) -> type[BaseModel]:
    """The pydantic model of a step's ``with:`` (every option but the target)."""
    fields = {}
    for p in params(kind):
        if p.name == TARGET:
            continue
        annotation = p.annotation
        if annotation is str:  # `serial: 2` means "2"; floats stay errors (1.10 != "1.1")
            annotation = Annotated[str, BeforeValidator(_int_as_str)]
        fields[p.name] = (annotation if p.default is not None else annotation | None, p.default)
    return create_model(
        f"{kind} options", __config__=ConfigDict(extra="forbid", strict=False), **fields
    )


def describe(kind: str) -> str:
    """The command's one-line help."""
    func = _command(kind) or RUNNERS[kind]
    return (inspect.getdoc(func) or kind).splitlines()[0]


def command_line(kind: str, options: dict[str, Any], target: str | None) -> str:
    """The `evc ...` command that does what the step does (for the plan)."""
    import shlex

    group, name = COMMANDS[kind]
    words = ["evc", group, name]
    values = {**options, **({TARGET: target} if target is not None else {})}
    for p in params(kind):
        value = values.get(p.name, p.default)
        if value is REQUIRED or value is None or (value == p.default and p.flag):
            continue
        if p.flag is None:
            words.append(str(value))
        elif isinstance(value, bool):
            words.append(p.flag if value else "--no-" + p.flag[2:])
        elif isinstance(value, list):
            for v in value:
                words += [p.flag, str(v)]
        else:
            words += [p.flag, str(value)]
    return shlex.join(words)


# --------------------------------------------------------------------- runners

RUNNERS: dict[str, Callable[..., Outcome]] = {}


def runner(kind: str):
    def register(func):
        RUNNERS[kind] = func
        return func

    return register


def run(kind: str, ws: Workspace, options: dict[str, Any], progress: bool) -> Outcome:
    """Carry out one step with its validated options (target included)."""
    return RUNNERS[kind](ws, progress=progress, **options)


def _log(progress: bool) -> Callable[[str], None]:
    """Build and push messages: dim lines on stderr, or nothing (``--json``)."""
    from evc.console import err

    if not progress:
        return lambda _msg: None
    return lambda msg: err.print(f"  {msg}", style="dim", highlight=False)


def _devices(results, what: str) -> Outcome:
    hosts = {r.name: r.state for r in results}
    bad = [r for r in results if r.state in ("failed", "unreachable")]
    why = "; ".join(f"{r.name}: {r.message or r.state}" for r in bad)
    return Outcome(
        ok=not bad,
        summary=f"{what}: {len(results) - len(bad)} of {len(results)} devices fine"
        + (f" ({why})" if why else ""),
        detail=[asdict(r) for r in results],
        hosts=hosts,
    )


def _fleet(run, what: str) -> Outcome:
    """An evc.ansible.RunResult as an outcome."""
    bad = run.failed_hosts
    why = "; ".join(f"{h}: {run.hosts[h].message or run.hosts[h].state}" for h in sorted(bad))
    return Outcome(
        ok=run.ok,
        summary=f"{what}: {len(run.hosts) - len(bad)} of {len(run.hosts)} hosts fine"
        + (f" ({why})" if why else ""),
        detail={k: v for k, v in run.to_dict().items() if k != "hosts"}
        | {"hosts": {h: r.state for h, r in run.hosts.items()}},
        hosts={h: r.state for h, r in run.hosts.items()},
    )


def _enrol(ws: Workspace, wanted: list, progress: bool, what: str) -> Outcome:
    """Add the devices not enrolled yet (a re-run adds nothing and says so)."""
    from evc import db, devices

    known = {r["name"] for r in db.workspace_db(ws).query("select name from devices")}
    new = [d for d in wanted if d.name not in known]
    if not new:
        names = ", ".join(d.name for d in wanted)
        return Outcome(True, f"{what}: already enrolled ({names})", hosts={})
    return _devices(devices.add(ws, new, progress=progress), what)


def enrol(ws: Workspace, devices: list, progress: bool = True) -> Outcome:
    """The devices of a run-config's ``devices:`` list."""
    return _enrol(ws, devices, progress, f"enrol {len(devices)} devices")


@runner("device.add")
def _device_add(
    ws,
    name: str,
    host: str,
    port: int,
    user: str,
    group: list[str] | None,
    role: str,
    label: list[str] | None,
    lat: float | None,
    lon: float | None,
    progress: bool = True,
) -> Outcome:
    from evc import devices

    device = devices.from_options(name, host, port, user, group, role, label, lat, lon)
    return _enrol(ws, [device], progress, f"device add {name}")


@runner("device.import")
def _device_import(ws, file: Path, progress: bool = True) -> Outcome:
    from evc import devices

    return _enrol(ws, devices.load_file(file), progress, f"import {file.name}")


@runner("device.check")
def _device_check(ws, target: str, progress: bool = True) -> Outcome:
    from evc import devices

    return _devices(devices.ping(ws, target, progress=progress), "ping")


@runner("device.facts")
def _device_facts(ws, target: str, progress: bool = True) -> Outcome:
    from evc import devices

    return _devices(devices.gather_facts(ws, target, progress=progress), "facts")


@runner("device.remove")
def _device_remove(ws, name: str, progress: bool = True) -> Outcome:
    from evc import devices

    device = devices.remove(ws, name)
    return Outcome(True, f"removed {name} ({device['host']})", detail=device)


@runner("registry.up")
def _registry_up(ws, image: str | None, progress: bool = True) -> Outcome:
    from evc import registry

    st = registry.up(ws, image)
    ok = st.state == "running" and not st.error
    return Outcome(
        ok,
        f"registry https://{st.address}: {st.state}" + (f" ({st.error})" if st.error else ""),
        detail=asdict(st),
    )


@runner("cert.push")
def _cert_push(ws, target: str, system_trust: bool, progress: bool = True) -> Outcome:
    from evc import certs

    return _fleet(certs.push(ws, target, system_trust, progress=progress), "cert push")


@runner("cert.revoke")
def _cert_revoke(ws, target: str, progress: bool = True) -> Outcome:
    from evc import certs

    return _fleet(certs.revoke(ws, target, progress=progress), "cert revoke")


@runner("cert.check")
def _cert_check(ws, target: str, progress: bool = True) -> Outcome:
    from evc import certs

    results = certs.check(ws, target, progress=progress)
    bad = [r for r in results if r.state != "ok" or not r.trusts_current_ca]
    return Outcome(
        ok=not bad,
        summary=f"cert check: {len(results) - len(bad)} of {len(results)} hosts trust the CA",
        detail=[asdict(r) for r in results],
        hosts={r.host: r.state for r in results},
    )


@runner("model.build")
def _model_build(
    ws,
    name: str,
    runtime: str,
    version: str,
    weights: Path | None,
    arch: str | None,
    owner: str | None,
    task: str | None,
    base_image: str | None,
    force: bool,
    progress: bool = True,
) -> Outcome:
    from evc.model import build

    m = build.build(
        ws,
        name,
        runtime,
        version,
        weights,
        arch,
        owner,
        task,
        base_image,
        force,
        log=_log(progress),
    )
    return Outcome(True, f"built {m.ref} ({m.image}) in {m.build_s} s", detail=m.to_dict())


@runner("model.push")
def _model_push(ws, ref: str, progress: bool = True) -> Outcome:
    from evc.model import publish

    m = publish.push(ws, ref, log=_log(progress))
    return Outcome(True, f"pushed {m.image} ({m.registry_digest})", detail=m.to_dict())


def _deployed(result, what: str) -> Outcome:
    outcome = _fleet(result.run, what)
    outcome.detail = result.to_dict()
    if result.rolled_back:
        back = ", ".join(f"{h} to {v}" for h, v in sorted(result.rolled_back.items()))
        outcome.summary += f"; rolled back {back}"
    return outcome


@runner("model.deploy")
def _model_deploy(
    ws,
    ref: str,
    target: str,
    serial: str | None,
    max_fail_percent: int,
    rollback_on_failure: bool,
    cpus: float | None,
    memory: str | None,
    progress: bool = True,
) -> Outcome:
    from evc.model import deploy

    result = deploy.deploy(
        ws,
        ref,
        target,
        serial,
        max_fail_percent,
        rollback_on_failure,
        cpus,
        memory,
        progress=progress,
    )
    return _deployed(result, f"deploy {ref}")


@runner("model.undeploy")
def _model_undeploy(ws, name: str, target: str, progress: bool = True) -> Outcome:
    from evc.model import deploy

    return _deployed(deploy.undeploy(ws, name, target, progress=progress), f"undeploy {name}")


@runner("model.rollback")
def _model_rollback(ws, name: str, target: str, progress: bool = True) -> Outcome:
    from evc.model import deploy

    return _deployed(deploy.rollback(ws, name, target, progress=progress), f"rollback {name}")


@runner("infer.run")
def _infer_run(
    ws,
    model: str,
    data: Path,
    target: str,
    strategy: str,
    retries: int,
    conf: float | None,
    iou: float | None,
    imgsz: int | None,
    fps: float,
    shard_size: int | None,
    progress: bool = True,
) -> Outcome:
    from evc.infer import runner

    result = runner.run(
        ws,
        model,
        data,
        target,
        strategy,
        retries,
        conf,
        iou,
        imgsz,
        fps,
        shard_size,
        progress=progress,
    )
    j = result.job
    return Outcome(
        ok=result.status == "success",
        summary=f"job {j['id']}: {j['items']} items, {j['ok']} ok, {j['failed']} failed on "
        f"{len(result.nodes)} nodes; results: `evc infer results {j['id']}`",
        detail=result.to_dict(),
        hosts={n: "ok" if not r.get("failed") else "failed" for n, r in result.nodes.items()},
    )


@runner("logs.collect")
def _logs_collect(
    ws, target: str = "all", offline_after: int | None = None, progress: bool = True
) -> Outcome:
    """Collect node telemetry (metrics, container states, liveness) into the database."""
    from evc import logs

    result = logs.collect(ws, target=target, progress=progress, offline_after=offline_after)
    out = _fleet(result.run, "telemetry")
    out.detail = result.to_dict()
    return out


@runner("grafana.build")
def _grafana_build(ws, out: Path | None = None, progress: bool = True) -> Outcome:
    """Write the Grafana dashboards and provisioning files."""
    from evc import grafana

    paths = grafana.build(ws, out) if out else grafana.build(ws)
    folders = sorted({str(Path(p).parent) for p in paths})
    return Outcome(
        True,
        f"{len(paths)} dashboard files in {', '.join(folders) or '-'}",
        detail=[str(p) for p in paths],
    )
