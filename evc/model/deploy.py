"""`evc model deploy|undeploy|rollback`: model containers on the nodes.

Each node runs one container per model, ``evc-model-NAME``, serving inference
shards (``evc-infer --serve``), from the image pinned by digest at the registry's
read-only endpoint (:func:`evc.model.catalogue.pull_reference`). Every action records
one row per targeted node (:mod:`evc.model.deployments`), with that reference, so a
rollback sends each node the very image it ran before.

A version may have a variant per arch: each node is sent its own arch's variant (its
arch from the device's facts, gathered first where unknown). A node whose arch has no
variant is skipped with a message saying so, never sent an image it cannot run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from evc import db as evcdb
from evc.ansible import HostResult, RunResult, run_playbook
from evc.config import Workspace
from evc.devices import gather_facts
from evc.errors import Result, UsageError
from evc.model.catalogue import docker_arch, pull_reference, variants
from evc.model.deployments import JOBS_DIR, current, previous, record, spec
from evc.names import Memory, ModelName, ModelRef, Serial, Target
from evc.options import TARGET_HELP, Options, arg, opt
from evc.progress import SILENT, Progress
from evc.targets import resolve_hosts

# Every model container has a memory limit: the bundled runtimes serve in well under
# 1 GiB; a heavier model asks for more with --memory.
DEFAULT_MEMORY = "1g"


class DeployOptions(Options):
    """Pull NAME:VERSION and run its container on the nodes; health-checked, idempotent."""

    ref: ModelRef = arg(help="NAME:VERSION")
    target: Target = arg(help=TARGET_HELP)
    serial: Serial | None = opt(None, help="Roll out in batches: a count (2) or a share (25%).")
    max_fail_percent: int = opt(
        100, help="Stop the rollout when more than this share of a batch fails.", ge=0, le=100
    )
    rollback_on_failure: bool = opt(
        False, help="If the rollout fails, put the nodes it touched back on their old version."
    )
    cpus: float | None = opt(None, help="CPU limit of the model container.", ge=0.01, le=1024)
    memory: Memory = opt(
        DEFAULT_MEMORY,
        help="Memory limit of the model container (512m, 2g). A model that leaks or is fed "
        "a hostile input is killed and restarted rather than starving the node.",
    )


class UndeployOptions(Options):
    """Remove the model's container from the nodes (the image stays for rollback)."""

    name: ModelName = arg(help="Model name.")
    target: Target = arg(help=TARGET_HELP)


class RollbackOptions(Options):
    """Put each node back on the version it ran before its current one."""

    name: ModelName = arg(help="Model name.")
    target: Target = arg(help=TARGET_HELP)


@dataclass
class DeployResult(Result):
    action: str
    model: str
    run: RunResult
    versions: dict[str, str]  # host -> version it was sent
    rollback: RunResult | None = None
    rolled_back: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # host -> why it was not sent

    @property
    def ok(self) -> bool:
        return self.run.ok and not self.skipped

    def to_dict(self) -> dict:
        return {
            "action": self.action,
            "model": self.model,
            "ok": self.ok,
            "versions": self.versions,
            "run": self.run.to_dict(),
            "rollback": self.rollback.to_dict() if self.rollback else None,
            "rolled_back": self.rolled_back,
            "skipped": self.skipped,
        }


def send(
    ws: Workspace,
    action: str,
    model: str,
    target: str,
    sent: dict,
    progress: Progress,
    *,
    serial: str | None = None,
    max_fail_percent: int = 100,
) -> RunResult:
    """model_deploy.yml with each host's own spec in ``sent`` (version, image, limits),
    recorded as ``action`` rows: deploy, rollback and `evc fleet converge` send this way."""
    extravars = {
        "evc_model": model,
        "evc_targets": sent,
        "evc_jobs_dir": JOBS_DIR,
        "evc_max_fail_percent": max_fail_percent,
        **({"evc_serial": serial} if serial else {}),
    }
    run = run_playbook(ws, "model_deploy.yml", target, extravars=extravars, progress=progress)
    record(ws, action, model, run, sent)
    return run


def host_arches(ws: Workspace, hosts: list[str], progress: Progress = SILENT) -> dict:
    """Each host's arch in Docker's words (amd64, arm64) from its facts; hosts whose arch
    is not known yet have their facts gathered first. None where it stays unknown."""

    def known() -> dict[str, str | None]:
        rows = evcdb.workspace_db(ws).query("SELECT name, arch FROM devices")
        return {r["name"]: docker_arch(r["arch"]) for r in rows}

    arches = known()
    unknown = [h for h in hosts if not arches.get(h)]
    if unknown:
        progress.log(f"gathering facts first: the arch of {', '.join(unknown)} is not known")
        gather_facts(ws, ",".join(unknown), progress)
        arches = known()
    return {h: arches.get(h) for h in hosts}


def _skipped(hosts: dict[str, str]) -> RunResult:
    """The per-host record of nodes a deploy was not sent to (nothing ran on them)."""
    now = time.time()
    return RunResult(
        playbook="model_deploy.yml", target=",".join(sorted(hosts)), ident="", artifacts_dir="",
        started=now, ended=now, rc=0,
        hosts={h: HostResult(h, "skipped", skipped=1, message=m) for h, m in hosts.items()},
    )  # fmt: skip


def deploy(ws: Workspace, options: DeployOptions, progress: Progress = SILENT) -> DeployResult:
    """Pull and run NAME:VERSION on every targeted node, in batches if asked: each node
    its own arch's variant, by digest. Nodes with no variant for their arch are skipped
    and reported (exit 1); the others are deployed all the same."""
    o = options
    by_arch = {m.arch: m for m in variants(ws, o.ref)}
    m = next(iter(by_arch.values()))
    unpushed = sorted(a for a, v in by_arch.items() if not v.registry_digest)
    if unpushed:
        raise UsageError(
            f"{o.ref} ({', '.join(unpushed)}) is not in the registry yet: "
            f"run `evc model push {o.ref}` first"
        )
    hosts = resolve_hosts(ws.inventory, o.target)
    before = {row["node"]: row for row in current(ws, m.name)}
    sent, skipped = {}, {}
    for host, arch in host_arches(ws, hosts, progress).items():
        if arch in by_arch:
            image = pull_reference(ws, by_arch[arch])
            sent[host] = {"version": m.version, "image": image, "cpus": o.cpus, "memory": o.memory}
        elif arch is None:
            skipped[host] = f"arch unknown (facts could not be gathered): {o.ref} not sent"
        else:
            skipped[host] = f"no {arch} build of {o.ref}: build it with --arch {arch}"
    for host, why in sorted(skipped.items()):
        progress.log(f"{host}: skipped: {why}")
    if sent:
        run = send(
            ws, "deploy", m.name, ",".join(sorted(sent)), sent, progress,
            serial=o.serial, max_fail_percent=o.max_fail_percent,
        )  # fmt: skip
        run.hosts.update(_skipped(skipped).hosts)
    else:
        run = _skipped(skipped)
    result = DeployResult("deploy", m.name, run, {h: m.version for h in sent}, skipped=skipped)
    if o.rollback_on_failure and not run.ok:
        # Nodes this rollout touched go back to what they ran before; new ones are left alone.
        back = {
            h: spec(before[h])
            for h, r in run.hosts.items()
            if r.state != "skipped" and h in before and before[h]["version"] != m.version
        }
        if back:
            result.rollback = send(ws, "rollback", m.name, ",".join(sorted(back)), back, progress)
            result.rolled_back = {h: s["version"] for h, s in back.items()}
    return result


def rollback(ws: Workspace, options: RollbackOptions, progress: Progress = SILENT) -> DeployResult:
    """Each targeted node goes back to the version it ran before its current one."""
    name = options.name
    hosts = resolve_hosts(ws.inventory, options.target)
    now = {row["node"]: row for row in current(ws, name)}
    sent, missing = {}, []
    for host in hosts:
        prev = previous(ws, name, host, now.get(host))
        if prev is None:
            missing.append(host)
        else:
            sent[host] = spec(prev)
    if missing:
        raise UsageError(
            f"no earlier version of {name} to roll back to on: {', '.join(sorted(missing))}"
        )
    run = send(ws, "rollback", name, ",".join(sorted(sent)), sent, progress)
    return DeployResult("rollback", name, run, {h: s["version"] for h, s in sent.items()})


def undeploy(ws: Workspace, options: UndeployOptions, progress: Progress = SILENT) -> DeployResult:
    """Remove the model's container from every targeted node."""
    name = options.name
    hosts = resolve_hosts(ws.inventory, options.target)
    now = {row["node"]: row for row in current(ws, name)}
    sent = {h: spec(now.get(h, {"version": "-", "image": "-"})) for h in hosts}
    run = run_playbook(
        ws, "model_undeploy.yml", options.target, extravars={"evc_model": name}, progress=progress
    )
    record(ws, "undeploy", name, run, sent)
    return DeployResult("undeploy", name, run, {h: s["version"] for h, s in sent.items()})
