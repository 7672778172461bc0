"""Model containers on nodes: deploy, undeploy, rollback, and the deployments history.

Each node runs one container per model, ``evc-model-NAME``, idle until a job
execs ``evc-infer`` in it. Every action writes one ``deployments`` row per
targeted node; a node's current deployment is its latest row that is not
'skipped' or 'failed'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from evc import db as evcdb
from evc import images
from evc.ansible import RunResult, resolve_hosts, run_playbook
from evc.config import Workspace
from evc.errors import UsageError

JOBS_DIR = "/var/lib/evc/jobs"  # on the node; models/NAME is mounted at /jobs in its container
_SERIAL_RE = re.compile(r"^[1-9][0-9]*%?$")
_LIVE = ("running", "removed")  # rows that say what a node runs (or that it runs nothing)


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


def current(ws: Workspace, model: str | None = None) -> list[dict]:
    """What runs where: the latest live row per (model, node), without removed ones."""
    rows = evcdb.workspace_db(ws).query(
        f"""
        SELECT d.* FROM deployments d
        JOIN (SELECT model, node, MAX(id) AS id FROM deployments
              WHERE state IN ({", ".join("?" * len(_LIVE))}) GROUP BY model, node) last
          ON d.id = last.id
        WHERE d.state = 'running' AND (? IS NULL OR d.model = ?)
        ORDER BY d.model, d.node
        """,
        [*_LIVE, model, model],
    )
    return list(rows)


def _spec(row: dict) -> dict:
    """What a node is sent: version, image and container limits."""
    return {k: row.get(k) for k in ("version", "image", "cpus", "memory")}


def _record(ws: Workspace, action: str, model: str, run: RunResult, sent: dict) -> None:
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        for host, r in run.hosts.items():
            if r.state in ("ok", "changed"):
                state = "removed" if action == "undeploy" else "running"
            else:
                state = "skipped" if r.state == "skipped" else "failed"
            db["deployments"].insert(
                {
                    "model": model,
                    "node": host,
                    **sent[host],
                    "action": action,
                    "state": state,
                    "run_id": run.ident,
                    "started": run.started,
                    "finished": run.ended,
                    "error": r.message if state == "failed" else None,
                }
            )


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
    _record(ws, action, model, run, sent)
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
    m = images.get(ws, ref)
    if not m.registry_digest:
        raise UsageError(f"{ref} is not in the registry yet: run `evc model push {ref}` first")
    hosts = resolve_hosts(ws.inventory, target)
    before = {row["node"]: row for row in current(ws, m.name)}
    spec = {"version": m.version, "image": m.image, "cpus": cpus, "memory": memory}
    sent = {h: spec for h in hosts}
    run = _run(ws, "deploy", m.name, target, sent, serial, max_fail_percent, progress)
    result = DeployResult("deploy", m.name, run, {h: m.version for h in hosts})
    if rollback_on_failure and not run.ok:
        # Nodes this rollout touched go back to what they ran before; new ones are left alone.
        back = {
            h: _spec(before[h])
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
        prev = _previous(ws, name, host, now.get(host))
        if prev is None:
            missing.append(host)
        else:
            sent[host] = _spec(prev)
    if missing:
        raise UsageError(
            f"no earlier version of {name} to roll back to on: {', '.join(sorted(missing))}"
        )
    run = _run(ws, "rollback", name, ",".join(sorted(sent)), sent, progress=progress)
    return DeployResult("rollback", name, run, {h: s["version"] for h, s in sent.items()})


def _previous(ws: Workspace, name: str, host: str, now: dict | None) -> dict | None:
    if now is None:
        return None
    rows = evcdb.workspace_db(ws).query(
        "SELECT * FROM deployments WHERE model = ? AND node = ? AND state = 'running' "
        "AND id < ? AND version != ? ORDER BY id DESC LIMIT 1",
        [name, host, now["id"], now["version"]],
    )
    return next(iter(rows), None)


def undeploy(ws: Workspace, name: str, target: str, progress: bool = True) -> DeployResult:
    """Remove the model's container from every targeted node."""
    hosts = resolve_hosts(ws.inventory, target)
    now = {row["node"]: row for row in current(ws, name)}
    sent = {h: _spec(now.get(h, {"version": "-", "image": "-"})) for h in hosts}
    run = run_playbook(
        ws, "model_undeploy.yml", target, extravars={"evc_model": name}, progress=progress
    )
    _record(ws, "undeploy", name, run, sent)
    return DeployResult("undeploy", name, run, {h: s["version"] for h, s in sent.items()})


def deployed_on(ws: Workspace, name: str, version: str) -> list[str]:
    """Nodes that currently run NAME:VERSION."""
    return [r["node"] for r in current(ws, name) if r["version"] == version]
