"""What a run-config step can do: each kind is one CLI command, with the same options.

A kind's options are the options model its command is built from (:mod:`evc.options`),
so a step's ``with:`` and the command's flags cannot drift apart; the runner carries out
the kind with the core function the command calls and turns its result into an
:class:`Outcome` (ok or not, one line, per-host states, details for the database).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evc import certs, db, devices, fleet, grafana, logs, registry_server
from evc.config import Workspace
from evc.infer import runner as infer
from evc.model import build, catalogue, deploy, publish
from evc.options import TARGET, Options, cli_meta, flag_of
from evc.progress import Progress


@dataclass
class Outcome:
    """What one step did: ok or not, one line for people, details for the database."""

    ok: bool
    summary: str
    detail: Any = None
    hosts: dict[str, str] = field(default_factory=dict)  # host -> ok/changed/failed/...


@dataclass(frozen=True)
class Capability:
    kind: str
    command: str  # the CLI words after `evc`, e.g. "model deploy"
    options: type[Options]
    run: Callable[[Workspace, Any, Progress], Outcome]

    @property
    def what(self) -> str:
        """The command's one-line help."""
        return (self.options.__doc__ or self.kind).strip().splitlines()[0]

    def command_line(self, options: Options) -> str:
        """The `evc ...` command that does what a step with ``options`` does (for the plan)."""
        words = ["evc", *self.command.split()]
        for name, f in self.options.model_fields.items():
            value = getattr(options, name)
            default = None if f.is_required() else f.get_default(call_default_factory=True)
            if value is None or (value == default and not cli_meta(f).get("argument")):
                continue
            flag = flag_of(self.options, name)
            if cli_meta(f).get("argument"):
                words.append(str(value))
            elif isinstance(value, bool):
                words.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, list | tuple):
                words += [w for v in value for w in (flag, str(v))]
            else:
                words += [flag, str(value)]
        return shlex.join(words)


# --------------------------------------------------------------------- outcomes


def _devices(result: devices.DevicesResult, what: str) -> Outcome:
    why = "; ".join(f"{r.name}: {r.message or r.state}" for r in result.failed)
    n = len(result.devices)
    return Outcome(
        ok=result.ok,
        summary=f"{what}: {n - len(result.failed)} of {n} devices fine"
        + (f" ({why})" if why else ""),
        detail=result.to_dict(),
        hosts={r.name: r.state for r in result.devices},
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


def _deployed(result: deploy.DeployResult, what: str) -> Outcome:
    outcome = _fleet(result.run, what)
    outcome.detail = result.to_dict()
    if result.rolled_back:
        back = ", ".join(f"{h} to {v}" for h, v in sorted(result.rolled_back.items()))
        outcome.summary += f"; rolled back {back}"
    return outcome


def _enrol(ws: Workspace, wanted: list, progress: Progress, what: str) -> Outcome:
    """Add the devices not enrolled yet (a re-run adds nothing and says so)."""
    known = {r["name"] for r in db.workspace_db(ws).query("select name from devices")}
    new = [d for d in wanted if d.name not in known]
    if not new:
        names = ", ".join(d.name for d in wanted)
        return Outcome(True, f"{what}: already enrolled ({names})", hosts={})
    return _devices(devices.add(ws, new, progress=progress), what)


def enrol(ws: Workspace, wanted: list, progress: Progress) -> Outcome:
    """The devices of a run-config's ``devices:`` list."""
    return _enrol(ws, wanted, progress, f"enrol {len(wanted)} devices")


# --------------------------------------------------------------------- runners


def _device_remove(ws, o: devices.RemoveOptions, _progress) -> Outcome:
    device = devices.remove(ws, o.name)
    return Outcome(True, f"removed {o.name} ({device['host']})", detail=device)


def _registry_up(ws, o: registry_server.UpOptions, _progress) -> Outcome:
    st = registry_server.up(ws, o.image)
    ro = st.read_only
    errors = "; ".join(e for e in (st.error, ro.error) if e)
    return Outcome(
        st.healthy,
        f"registry https://{st.address}: {st.state}, read-only https://{ro.address}: {ro.state}"
        + (f" ({errors})" if errors else ""),
        detail=asdict(st),
    )


def _cert_check(ws, o: certs.CheckOptions, progress) -> Outcome:
    result = certs.check(ws, o, progress)
    n, bad = len(result.checks), sum(not c.ok for c in result.checks)
    return Outcome(
        ok=result.ok,
        summary=f"cert check: {n - bad} of {n} hosts trust the CA and hold a pull credential",
        detail=result.to_dict(),
        hosts={c.host: c.state for c in result.checks},
    )


def _drift(result: fleet.StatusResult, what: str) -> Outcome:
    n, bad = len(result.nodes), sum(not x.ok for x in result.nodes)
    return Outcome(
        ok=result.ok,
        summary=f"{what}: {n - bad} of {n} nodes as declared",
        detail=result.to_dict(),
        hosts={x.host: x.state for x in result.nodes},
    )


def _model_build(ws, o: build.BuildOptions, progress, *, trust_weights: bool = False) -> Outcome:
    models = build.build(ws, o, progress, trust_weights=trust_weights)
    built = ", ".join(f"{m.image} in {m.build_s} s" for m in models)
    return Outcome(True, f"built {models[0].ref}: {built}", detail=catalogue.summary(models))


def _model_push(ws, o: publish.PushOptions, progress) -> Outcome:
    models = publish.push(ws, o, progress)
    pushed = ", ".join(f"{m.arch} {m.registry_digest}" for m in models)
    return Outcome(
        True, f"pushed {models[0].ref} ({pushed}; index {models[0].index_digest})",
        detail=catalogue.summary(models),
    )  # fmt: skip


def _infer_run(ws, o: infer.RunOptions, progress) -> Outcome:
    return job_outcome(infer.run(ws, o, progress))


def job_outcome(result) -> Outcome:
    """An inference job's result (evc.infer.jobs.JobResult) as an outcome."""
    j = result.job
    return Outcome(
        ok=result.ok,
        summary=f"job {j['id']}: {j['items']} items, {j['ok']} ok, {j['failed']} failed on "
        f"{len(result.nodes)} nodes; results: `evc infer results {j['id']}`",
        detail=result.to_dict(),
        hosts={n: "ok" if not r.get("failed") else "failed" for n, r in result.nodes.items()},
    )


def _logs_collect(ws, o: logs.CollectOptions, progress) -> Outcome:
    result = logs.collect(ws, o, progress)
    out = _fleet(result.run, "telemetry")
    out.detail = result.to_dict()
    return out


def _grafana_build(ws, o: grafana.BuildOptions, _progress) -> Outcome:
    paths = grafana.build(ws, o.out)
    folders = sorted({str(Path(p).parent) for p in paths})
    return Outcome(
        True,
        f"{len(paths)} dashboard files in {', '.join(folders) or '-'}",
        detail=[str(p) for p in paths],
    )


CAPABILITIES: dict[str, Capability] = {
    c.kind: c
    for c in (
        Capability("device.add", "device add", devices.AddOptions,
                   lambda ws, o, p: _enrol(ws, [o.device()], p, f"device add {o.name}")),
        Capability("device.import", "device import", devices.ImportOptions,
                   lambda ws, o, p: _enrol(ws, devices.load_file(o.file), p,
                                           f"import {o.file.name}")),
        Capability("device.check", "device ping", devices.PingOptions,
                   lambda ws, o, p: _devices(devices.ping(ws, o.target, progress=p), "ping")),
        Capability("device.facts", "device facts", devices.FactsOptions,
                   lambda ws, o, p: _devices(devices.gather_facts(ws, o.target, progress=p),
                                             "facts")),
        Capability("device.remove", "device remove", devices.RemoveOptions, _device_remove),
        Capability("registry.up", "registry up", registry_server.UpOptions, _registry_up),
        Capability("cert.push", "cert push", certs.PushOptions,
                   lambda ws, o, p: _fleet(certs.push(ws, o, p), "cert push")),
        Capability("cert.revoke", "cert revoke", certs.RevokeOptions,
                   lambda ws, o, p: _fleet(certs.revoke(ws, o, p), "cert revoke")),
        Capability("cert.check", "cert check", certs.CheckOptions, _cert_check),
        Capability("fleet.status", "fleet status", fleet.StatusOptions,
                   lambda ws, o, p: _drift(fleet.status(ws, o, p), "fleet status")),
        Capability("fleet.converge", "fleet converge", fleet.ConvergeOptions,
                   lambda ws, o, p: _drift(fleet.converge(ws, o, p), "fleet converge")),
        Capability("model.build", "model build", build.BuildOptions, _model_build),
        Capability("model.push", "model push", publish.PushOptions, _model_push),
        Capability("model.deploy", "model deploy", deploy.DeployOptions,
                   lambda ws, o, p: _deployed(deploy.deploy(ws, o, p), f"deploy {o.ref}")),
        Capability("model.undeploy", "model undeploy", deploy.UndeployOptions,
                   lambda ws, o, p: _deployed(deploy.undeploy(ws, o, p), f"undeploy {o.name}")),
        Capability("model.rollback", "model rollback", deploy.RollbackOptions,
                   lambda ws, o, p: _deployed(deploy.rollback(ws, o, p), f"rollback {o.name}")),
        Capability("infer.run", "infer run", infer.RunOptions, _infer_run),
        Capability("logs.collect", "logs collect", logs.CollectOptions, _logs_collect),
        Capability("grafana.build", "grafana build", grafana.BuildOptions, _grafana_build),
    )
}  # fmt: skip


def output_paths(kind: str) -> set[str]:
    """Path options the command writes to (all other paths must exist beforehand)."""
    fields = CAPABILITIES[kind].options.model_fields
    return {n for n, f in fields.items() if cli_meta(f).get("output")}


def takes_target(kind: str) -> bool:
    return TARGET in CAPABILITIES[kind].options.model_fields


def run(
    kind: str, ws: Workspace, options: Options, progress: Progress, *, trust_weights: bool = False
) -> Outcome:
    """Carry out one step with its validated options. ``trust_weights`` is the operator's
    `evc run --trust-weights` (a run-config cannot say it for itself)."""
    if kind == "model.build":
        return _model_build(ws, options, progress, trust_weights=trust_weights)
    return CAPABILITIES[kind].run(ws, options, progress)
