"""Desired state: what the database says each node should hold, what it holds, the drift
between them (`evc fleet status`) and its repair (`evc fleet converge`).

The declared state of a node is what EVC already recorded: the registry CA and a pull
credential for each device that holds one (:mod:`evc.pull_credentials`; a revoked
device is declared to hold none, and converge gives no access back), and the models it
runs by digest with their limits (:func:`evc.model.deployments.current`). The observed
state comes from ONE parallel run of ``fleet_status.yml`` (the telemetry module's
``fleet_state``). What a node reports is data: it is bounded on the node, read here as
plain values, never rendered as a template, and a container name is used on the node
again only when it is a valid model name.

Repairs use the existing paths: `evc cert push` for trust, the deploy play with each
node's own recorded image and limits (as a rollback does), the undeploy play for an
``evc-model-*`` or ``evc-pull-*`` container that nothing declares. Containers without
EVC's labels are never reported or touched. Each repair is a ``node_events`` row.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from evc import certs, pull_credentials, registry
from evc import db as evcdb
from evc.ansible import HostResult, RunResult, run_playbook
from evc.config import Workspace
from evc.errors import Result
from evc.model import deploy as model_deploy
from evc.model.deployments import CONTAINER_PREFIX, PULLER_PREFIX, current, spec
from evc.names import MODEL_NAME, Target
from evc.options import TARGET_HELP, Options, arg, opt
from evc.progress import SILENT, Progress
from evc.targets import resolve_hosts

TASK = "fleet state"  # fleet_status.yml's one task
KINDS = ("unreachable", "ca-missing", "ca-stale", "credential-missing", "model-not-running",
         "wrong-digest", "puller-not-running", "unknown-container")  # fmt: skip
TRUST = ("ca-missing", "ca-stale", "credential-missing")
MODEL = ("model-not-running", "wrong-digest", "puller-not-running")  # the deploy play repairs


class StatusOptions(Options):
    """Compare each node with what the database declares (CA, credential, models by digest);
    list the drift per node."""

    target: Target = arg("all", help=TARGET_HELP)


class ConvergeOptions(Options):
    """Repair the drift `evc fleet status` finds (cert push, deploy by digest, undeploy of
    undeclared EVC containers); a second run changes nothing."""

    target: Target = arg("all", help=TARGET_HELP)
    dry_run: bool = opt(False, help="Only say what would be repaired.")


@dataclass
class Declared:
    """What one node should hold."""

    trust: bool  # holds a pull credential: should trust the CA and be logged in
    ca_sha256: str  # the workspace's current registry CA
    models: dict[str, dict] = field(default_factory=dict)  # model -> current deployment row


@dataclass
class Drift:
    kind: str  # one of KINDS
    message: str
    fix: str  # the command that repairs it
    model: str | None = None


@dataclass
class NodeStatus:
    host: str
    state: str  # ok, drift, unreachable, failed (the observation's outcome for this node)
    drift: list[Drift] = field(default_factory=list)
    repairs: list[dict[str, Any]] = field(default_factory=list)  # converge only

    @property
    def ok(self) -> bool:
        return not self.drift


@dataclass
class StatusResult(Result):
    nodes: list[NodeStatus]
    duration_s: float

    @property
    def ok(self) -> bool:
        return all(n.ok for n in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "duration_s": self.duration_s,
                "nodes": [asdict(n) for n in self.nodes]}  # fmt: skip


def declared(ws: Workspace, hosts: list[str]) -> dict[str, Declared]:
    """Each host's declared state, from the workspace's registry files and database."""
    ca = hashlib.sha256(registry.files(ws).ca_cert.read_bytes()).hexdigest()
    holders = pull_credentials.holders(ws)
    out = {h: Declared(h in holders, ca) for h in hosts}
    for row in current(ws):
        if row["node"] in out:
            out[row["node"]].models[row["model"]] = row
    return out


def _digest(image: str) -> str:
    return image.rpartition("@")[2] if "@" in image else ""


def runs_image(container: dict, image: str) -> bool:
    """Whether an observed container runs ``image`` (``REPO@sha256:...``): its reference
    is that image, or the image it runs carries that digest."""
    if container.get("image") == image:
        return True
    want = _digest(image)
    return bool(want) and any(_digest(str(d)) == want for d in container.get("digests") or ())


def drift(host: str, want: Declared, state: str, report: dict | None,
          message: str | None = None) -> list[Drift]:  # fmt: skip
    """The drift of one node, a pure function of what is declared and what it reported.

    ``state`` is the observation's outcome for the host (ok, failed, unreachable);
    ``report`` what the node's module returned (None when it did not answer).
    """
    fix = f"evc fleet converge {host}"
    if state == "unreachable" or report is None:
        why = message or "no answer"
        return [Drift("unreachable", f"{host} did not answer: {why}", f"evc device ping {host}")]
    out = []
    if want.trust:
        ca = report.get("ca_sha256")
        if not ca:
            out.append(Drift("ca-missing", "no registry CA on the node", fix))
        elif ca != want.ca_sha256:
            out.append(Drift("ca-stale", "holds another CA than the registry's (a missed "
                             "rotation or an older push)", fix))  # fmt: skip
        if not report.get("credential"):
            out.append(Drift("credential-missing", "not logged in to the registry", fix))
    elif want.models:
        why = "holds no pull credential (revoked or never pushed), so it cannot pull its models"
        out.append(Drift("credential-missing", why, f"evc cert push {host}"))
    by_name = {c.get("name"): c for c in report.get("containers") or () if isinstance(c, dict)}
    for model, row in sorted(want.models.items()):
        ref = f"{model}:{row['version']}"
        c = by_name.get(CONTAINER_PREFIX + model)
        if c is None or c.get("state") != "running":
            seen = "absent" if c is None else str(c.get("state"))[:32]
            out.append(Drift("model-not-running", f"{ref} is not running on {host} "
                             f"(container {seen})", fix, model))  # fmt: skip
        elif not runs_image(c, row["image"]):
            out.append(Drift("wrong-digest", f"{ref} runs {str(c.get('image'))[:200]}, not "
                             f"{row['image']}", fix, model))  # fmt: skip
        elif (
            report.get("queue_credential") is True
            and _state(by_name, PULLER_PREFIX + model) != "running"
        ):
            out.append(Drift("puller-not-running", f"{ref}'s puller is not running on {host} "
                             "(it holds a queue credential)", fix, model))  # fmt: skip
    for name in sorted(n for n in by_name if isinstance(n, str)):
        prefix = next((p for p in (CONTAINER_PREFIX, PULLER_PREFIX) if name.startswith(p)), None)
        if prefix and name[len(prefix) :] not in want.models:
            why = f"{name[:80]} is on the node but nothing declares it"
            out.append(Drift("unknown-container", why, fix, name[len(prefix) :]))
    return out


def _state(by_name: dict, name: str) -> str | None:
    c = by_name.get(name)
    return str(c.get("state")) if c else None


def extravars(ws: Workspace) -> dict[str, str]:
    """fleet_status.yml's extravars: the endpoint whose CA and login the nodes report."""
    return {"registry_address": registry.load(ws).ro_address}


def _report(run: RunResult, host: str) -> tuple[HostResult, dict | None]:
    """A host's result in a fleet_status.yml run and its report (None without one)."""
    r = run.hosts.get(host) or HostResult(host, "unreachable", message="not in the run")
    report = (r.printed(TASK) or {}).get("fleet")
    return r, report if isinstance(report, dict) else None


def not_serving(
    run: RunResult, model: str, rows: dict[str, dict], *, pull: bool = False
) -> dict[str, str]:
    """{host: why} for the hosts of ``rows`` (host -> its current deployment of ``model``)
    that a fleet_status.yml run found not running it at the declared image (``pull``: or
    without its puller; a push-mode job does not need one)."""
    kinds = MODEL if pull else tuple(k for k in MODEL if k != "puller-not-running")
    out = {}
    for host, row in rows.items():
        r, report = _report(run, host)
        items = drift(host, Declared(False, "", {model: row}), r.state, report, r.message)
        if any(d.kind == "unreachable" for d in items):
            out[host] = f"{host} did not answer: {r.message or 'no report'}"
        elif any(d.kind in kinds for d in items):
            out[host] = not_running(f"{model}:{row['version']}", host)
    return out


def not_running(ref: str, host: str) -> str:
    """Why a job leaves ``host`` out, or gives it up mid-job, and what repairs it."""
    return f"{ref} is not running on {host}: `evc fleet converge {host}`"


def observe(
    ws: Workspace, target: str, progress: Progress = SILENT
) -> tuple[dict[str, Declared], dict[str, NodeStatus]]:
    """One run of fleet_status.yml on ``target``: each host's declared state and status."""
    hosts = resolve_hosts(ws.inventory, target)
    want = declared(ws, hosts)
    args = extravars(ws)
    run = run_playbook(ws, "fleet_status.yml", target, extravars=args, progress=progress)
    certs.explain(run, args["registry_address"])
    out = {}
    for host in hosts:
        r, report = _report(run, host)
        items = drift(host, want[host], r.state, report, r.message)
        state = r.state if report is None else ("drift" if items else "ok")
        if state == "failed":
            items[0].message = f"{host} could not report its state: {r.message}"
        out[host] = NodeStatus(host, state, items)
    return want, out


def status(ws: Workspace, options: StatusOptions, progress: Progress = SILENT) -> StatusResult:
    """Drift per node of ``options.target``: one parallel run."""
    started = time.time()
    _, nodes = observe(ws, options.target, progress)
    return StatusResult([nodes[h] for h in sorted(nodes)], round(time.time() - started, 2))


# ------------------------------------------------------------------ converge


@dataclass
class ConvergeResult(StatusResult):
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return any(r["done"] for n in self.nodes for r in n.repairs)

    @property
    def ok(self) -> bool:
        """Every drift found was repaired (a dry run: there was none)."""
        return all(
            not n.drift or (n.repairs and all(r["ok"] and r["done"] for r in n.repairs))
            for n in self.nodes
        )

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "dry_run": self.dry_run, "changed": self.changed}


def _repair(node: NodeStatus, item: Drift, action: str, ok: bool, done: bool,
            message: str | None = None) -> None:  # fmt: skip
    node.repairs.append({"kind": item.kind, "model": item.model, "action": action, "ok": ok,
                         "done": done, "message": message})  # fmt: skip


def _plan(want: dict[str, Declared], nodes: dict[str, NodeStatus]) -> dict[str, Any]:
    """What converge does: hosts to push trust to, (model, host) to deploy, to remove, and
    what it cannot repair (host -> [(drift, why)])."""
    plan: dict[str, Any] = {"trust": [], "deploy": {}, "remove": {}, "cannot": {}}
    for host, node in nodes.items():
        for item in node.drift:
            why = None
            if item.kind == "unreachable":
                why = item.message
            elif item.kind in TRUST and not want[host].trust:
                why = f"no pull credential is declared (revoked?): `evc cert push {host}`"
            elif item.kind in TRUST:
                if host not in plan["trust"]:
                    plan["trust"].append(host)
            elif item.kind in MODEL:
                plan["deploy"].setdefault(item.model, {})[host] = spec(
                    want[host].models[item.model]
                )
            elif item.model and _valid_name(item.model):
                hosts = plan["remove"].setdefault(item.model, [])
                if host not in hosts:  # its model and puller containers: one undeploy
                    hosts.append(host)
            else:
                why = "not a valid model name: left alone"
            if why:
                plan["cannot"].setdefault(host, []).append((item, why))
    return plan


def _valid_name(name: str) -> bool:
    try:
        MODEL_NAME(name)
    except ValueError:
        return False
    return True


def _record(ws: Workspace, nodes: dict[str, NodeStatus]) -> None:
    """Each repair done or failed is a node_events row (from: the drift, to: the outcome)."""
    now = time.time()
    rows = [
        {"node": n.host, "from_state": f"drift:{r['kind']}" + (f":{r['model']}" if r["model"]
         else ""), "to_state": "repaired" if r["ok"] else "repair-failed", "at": now}
        for n in nodes.values() for r in n.repairs if r["done"] or not r["ok"]
    ]  # fmt: skip
    if rows:
        db = evcdb.workspace_db(ws)
        with evcdb.transaction(db):
            db["node_events"].insert_all(rows)


def converge(
    ws: Workspace, options: ConvergeOptions, progress: Progress = SILENT
) -> ConvergeResult:
    """Observe (one run), then repair: trust first (one cert push), then each model's
    nodes (one deploy run per model, each node its own recorded image and limits), then
    undeclared EVC containers. A node whose trust could not be repaired gets no model."""
    started = time.time()
    want, nodes = observe(ws, options.target, progress)
    plan = _plan(want, nodes)
    for host, items in plan["cannot"].items():
        for item, why in items:
            _repair(nodes[host], item, "none", False, False, why)
    dry = options.dry_run
    untrusted: dict[str, str] = {}
    if plan["trust"]:
        outcome = {}
        if not dry:
            run = certs.push(ws, certs.PushOptions(target=",".join(plan["trust"])), progress)
            outcome = {h: r for h, r in run.hosts.items()}
        for host in plan["trust"]:
            r = outcome.get(host)
            ok = dry or (r is not None and r.state in ("ok", "changed"))
            why = None if ok else (r.message if r else "not in the run")
            if not ok:
                untrusted[host] = f"cert push failed: {why}"
            for item in nodes[host].drift:
                if item.kind in TRUST:
                    _repair(nodes[host], item, "cert push", ok, not dry, why)
    for model, sent in sorted(plan["deploy"].items()):
        go = {h: s for h, s in sent.items() if h not in untrusted}
        results = {}
        if go and not dry:
            run = model_deploy.send(ws, "deploy", model, ",".join(sorted(go)), go, progress)
            results = run.hosts
        for host in sent:
            r = results.get(host)
            ok = host not in untrusted and (dry or (r is not None and r.state in ("ok", "changed")))
            why = untrusted.get(host) or (None if ok else (r.message if r else "not in the run"))
            for item in nodes[host].drift:
                if item.model == model and item.kind in MODEL:
                    _repair(nodes[host], item, f"deploy {spec(want[host].models[model])['image']}",
                            ok, not dry and host not in untrusted, why)  # fmt: skip
    for model, hosts in sorted(plan["remove"].items()):
        results = {}
        if not dry:
            run = run_playbook(ws, "model_undeploy.yml", ",".join(hosts),
                               extravars={"evc_model": model}, progress=progress)  # fmt: skip
            results = run.hosts
        for host in hosts:
            r = results.get(host)
            ok = dry or (r is not None and r.state in ("ok", "changed"))
            for item in nodes[host].drift:
                if item.kind == "unknown-container" and item.model == model:
                    _repair(nodes[host], item, f"remove {CONTAINER_PREFIX}{model}", ok, not dry,
                            None if ok else (r.message if r else "not in the run"))  # fmt: skip
    if not dry:
        _record(ws, nodes)
    return ConvergeResult([nodes[h] for h in sorted(nodes)], round(time.time() - started, 2),
                          dry_run=dry)  # fmt: skip
