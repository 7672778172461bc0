"""`evc model deploy|undeploy|rollback`: model containers on the nodes.

Each node runs one container per model, ``evc-model-NAME``, serving inference
shards (``evc-infer --serve``). Every action records one row per targeted node
(:mod:`evc.model.deployments`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from evc.ansible import RunResult, resolve_hosts, run_playbook
from evc.config import Workspace
from evc.errors import UsageError
from evc.model.catalogue import get
from evc.model.deployments import JOBS_DIR, current, previous, record, spec

_SERIAL_RE = re.compile(r"^[1-9][0-9]*%?$")


@dataclass
class DeployResult:
    action: str
    model: str
    run: RunResult
    versions: dict[str, str]  # host -> version it was sent
    rollback: RunResult | None = None
    rolled_back: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "action": self.action,
            "model": self.model,
            "versions": self.versions,
            "run": self.run.to_dict(),
            "rollback": self.rollback.to_dict() if self.rollback else None,
            "rolled_back": self.rolled_back,
        }


def _check_serial(serial: str | None) -> None:
    if serial is not None and not _SERIAL_RE.match(serial):
        raise UsageError(
            f"bad --serial {serial!r}; expected a count like 2 or a percentage like 25%"
        )


def _run(ws, action, model, target, sent, serial=None, max_fail_percent=100, progress=True):
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


def deploy(
    ws: Workspace,
    ref: str,
    target: str,
    serial: str | None = None,
    max_fail_percent: int = 100,
    rollback_on_failure: bool = False,
    cpus: float | None = None,
    memory: str | None = None,
    progress: bool = True,
) -> DeployResult:
    """Pull and run NAME:VERSION on every targeted node, in batches if asked."""
    _check_serial(serial)
    if not 0 <= max_fail_percent <= 100:
        raise UsageError(f"--max-fail-percent {max_fail_percent} is out of range 0..100")
    m = get(ws, ref)
    if not m.registry_digest:
        raise UsageError(f"{ref} is not in the registry yet: run `evc model push {ref}` first")
    hosts = resolve_hosts(ws.inventory, target)
    before = {row["node"]: row for row in current(ws, m.name)}
    wanted = {"version": m.version, "image": m.image, "cpus": cpus, "memory": memory}
    sent = {h: wanted for h in hosts}
    run = _run(ws, "deploy", m.name, target, sent, serial, max_fail_percent, progress)
    result = DeployResult("deploy", m.name, run, {h: m.version for h in hosts})
    if rollback_on_failure and not run.ok:
        # Nodes this rollout touched go back to what they ran before; new ones are left alone.
        back = {
            h: spec(before[h])
            for h, r in run.hosts.items()
            if r.state != "skipped" and h in before and before[h]["version"] != m.version
        }
        if back:
            result.rollback = _run(
                ws, "rollback", m.name, ",".join(sorted(back)), back, progress=progress
            )
            result.rolled_back = {h: s["version"] for h, s in back.items()}
    return result


def rollback(ws: Workspace, name: str, target: str, progress: bool = True) -> DeployResult:
    """Each targeted node goes back to the version it ran before its current one."""
    hosts = resolve_hosts(ws.inventory, target)
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
    run = _run(ws, "rollback", name, ",".join(sorted(sent)), sent, progress=progress)
    return DeployResult("rollback", name, run, {h: s["version"] for h, s in sent.items()})


def undeploy(ws: Workspace, name: str, target: str, progress: bool = True) -> DeployResult:
    """Remove the model's container from every targeted node."""
    hosts = resolve_hosts(ws.inventory, target)
    now = {row["node"]: row for row in current(ws, name)}
    sent = {h: spec(now.get(h, {"version": "-", "image": "-"})) for h in hosts}
    run = run_playbook(
        ws, "model_undeploy.yml", target, extravars={"evc_model": name}, progress=progress
    )
    record(ws, "undeploy", name, run, sent)
    return DeployResult("undeploy", name, run, {h: s["version"] for h, s in sent.items()})
