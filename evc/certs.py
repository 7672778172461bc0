"""Registry trust on the nodes: push, revoke and check the CA and the node's pull
credential, rotate to a new CA (evc cert).

Nodes trust and log in to the registry's read-only endpoint only, each with a
credential of its own (evc.pull_credentials); the read-write endpoint and its
credential stay on the controller. Failures are reported per host in plain words:
the playbooks find out why a node cannot reach the registry without showing the
secret (see cert_push.yml), and :func:`explain` turns the TLS, connection and SSH
errors into reasons that name the date, the names or the address involved.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from evc import pki, pull_credentials, registry, registry_api, registry_server
from evc.ansible import RunResult, run_playbook
from evc.config import Workspace
from evc.errors import EVCError, Result, UsageError
from evc.keys import write_private
from evc.names import Target
from evc.options import TARGET_HELP, Options, arg, opt
from evc.progress import SILENT, Progress
from evc.queue import server as queue
from evc.targets import resolve_hosts


def _vars(ws: Workspace) -> dict:
    """Extravars of the cert playbooks: paths and names, never a secret.

    ``registry_address`` is the read-only endpoint, the one nodes use;
    ``queue_host``/``queue_port`` the pull-mode queue's address, where it is set up;
    ``registry_rw_address`` only names what an older EVC put on the nodes (its CA and
    the read-write login), which they lose. While a rotation to a new CA is under way
    the nodes get both CAs, and the probe verifies with the one that signed the server
    certificate.
    """
    settings = registry.load(ws)
    f = registry.files(ws)
    pending = registry.rotation_pending(ws)
    switched = pending and pki.signed_by(f.server_cert, f.next_ca().ca_cert)
    queue_host, queue_port = queue.address(ws) if queue.configured(ws) else ("", 0)
    return {
        "queue_host": queue_host,  # empty: no queue, no queue credential on the nodes
        "queue_port": queue_port,
        "registry_address": settings.ro_address,
        "registry_rw_address": settings.address,
        "registry_ca": str(f.ca_cert),
        "registry_ca_next": str(f.next_ca().ca_cert) if pending else "",
        "registry_probe_ca": registry.NEXT_CA_NAME if switched else "ca.crt",
        "probe_ref": registry_server.probe_ref(settings.ro_address),
    }


class PushOptions(Options):
    """CA in Docker's certs.d, log in with the node's own pull credential (no_log), verify by
    a pull; per host, why not."""

    target: Target = arg("all", help=TARGET_HELP)
    system_trust: bool = opt(False, help="Also add the CA to the system trust store.")


class RevokeOptions(Options):
    """Delete the nodes' pull credentials (refused at once), remove the CA and the login;
    succeeds only where a pull then fails."""

    target: Target = arg(help=TARGET_HELP)


class CheckOptions(Options):
    """Per node: trusts the current CA? Read-only endpoint verified over TLS (else why)? Pull
    credential? Cert days left."""

    target: Target = arg("all", help=TARGET_HELP)


def _push(
    ws: Workspace, target: str, nonces: dict[str, str], extravars: dict, progress: Progress
) -> RunResult:
    """cert_push.yml for the hosts of ``nonces`` (each one's pull credential); the key
    that the play derives their passwords from goes through the vars_prompt."""
    run = run_playbook(
        ws,
        "cert_push.yml",
        target,
        extravars={**extravars, "registry_pull_nonce": nonces},
        secrets={pull_credentials.PROMPT: pull_credentials.key(ws)},
        progress=progress,
    )
    return explain(run, extravars["registry_address"])


def push(ws: Workspace, options: PushOptions, progress: Progress = SILENT) -> RunResult:
    """CA to certs.d (and the system store if asked or already there), a pull credential
    for each node that has none, Docker login, verified by a pull; a failure says why,
    per host."""
    nonces = pull_credentials.issue(ws, resolve_hosts(ws.inventory, options.target))
    if queue.configured(ws):
        queue.sync_acl(ws)  # a new credential is a new Redis user
    extravars = {**_vars(ws), "registry_system_trust": options.system_trust}
    return _push(ws, options.target, nonces, extravars, progress)


def revoke(ws: Workspace, options: RevokeOptions, progress: Progress = SILENT) -> RunResult:
    """Delete the nodes' pull credentials first (the registry refuses them from its next
    request, whether or not a node answers: a stolen one does not), then logout, remove
    the CA and the probe image; succeeds only if a pull then fails."""
    pull_credentials.revoke(ws, resolve_hosts(ws.inventory, options.target))
    if queue.configured(ws):
        queue.sync_acl(ws)  # the device's Redis user goes, its connections close
    run = run_playbook(
        ws, "cert_revoke.yml", options.target, extravars=_vars(ws), progress=progress
    )
    return explain(run, registry.load(ws).ro_address)


@dataclass
class CertCheck:
    host: str
    state: str  # ok, failed, unreachable
    trusts_current_ca: bool | None
    pull_credential: bool  # the read-only endpoint holds a credential for this node
    endpoint: str  # the read-only endpoint the node pulls from
    server_cert_days_left: int
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "ok" and bool(self.trusts_current_ca) and self.pull_credential


@dataclass
class CheckResult(Result):
    checks: list[CertCheck]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.checks]


def check(ws: Workspace, options: CheckOptions, progress: Progress = SILENT) -> CheckResult:
    """Per node: does it hold the current CA; does the read-only endpoint answer it over
    verified TLS; does it hold a pull credential; how long the server certificate has
    left."""
    target = options.target
    f = registry.files(ws)
    want = hashlib.sha256(f.ca_cert.read_bytes()).hexdigest()
    days = pki.certificate_info(f.server_cert)["days_left"]
    extravars = _vars(ws)
    address = extravars["registry_address"]
    run = run_playbook(ws, "cert_check.yml", target, extravars=extravars, progress=progress)
    explain(run, address)
    holders = pull_credentials.holders(ws)
    out = []
    for host, r in sorted(run.hosts.items()):
        stat = r.outputs.get("registry CA on node", {}).get("stat")
        trusts = None if stat is None else bool(stat.get("exists") and stat["checksum"] == want)
        message = r.message
        if message is None and trusts is False:
            message = (
                "holds another CA: run `evc cert push`"
                if stat.get("exists")
                else "no registry CA: run `evc cert push`"
            )
        elif message is None and host not in holders:
            message = "no pull credential: run `evc cert push`"
        out.append(CertCheck(host, r.state, trusts, host in holders, address, days, message))
    return CheckResult(out)


# ------------------------------------------------------------------ plain reasons

_UNKNOWN_CA = ("unable to get local issuer", "self-signed", "self signed", "unknown authority",
               "unable to verify the first")  # fmt: skip
_NO_ANSWER = ("connection refused", "timed out", "no route to host", "network is unreachable",
              "connection reset")  # fmt: skip


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _validity(low: str, cert: dict | None) -> str:
    """Why the server certificate is out of its validity: by the controller's clock, or
    (when that finds it valid) by the node's."""
    now = dt.datetime.now(dt.UTC).timestamp()
    if cert is None:
        return "server certificate expired or not yet valid"
    if cert["not_after"] < now:
        return (
            f"server certificate expired on {_when(cert['not_after'])} "
            "(renew it: `evc registry rotate`)"
        )
    if cert["not_before"] > now:
        return f"server certificate is not valid before {_when(cert['not_before'])}"
    return (
        f"server certificate is {'not yet valid' if 'not yet' in low else 'expired'} by the "
        f"node's clock (it is valid {_when(cert['not_before'])} to {_when(cert['not_after'])}): "
        "check the node's clock"
    )


def reason(message: str, address: str, served: Callable[[], dict | None]) -> str:
    """A plain reason for a node's failure to reach the registry, or ``message`` itself.

    ``served`` returns what the registry presents (read by the controller, unverified)
    to put dates and names in the reason; it is called only when they are needed.
    """
    low = message.lower()
    host = address.rpartition(":")[0]
    if "expired" in low or "not yet valid" in low:
        return _validity(low, served())
    if "mismatch" in low or "valid for" in low:
        cert = served()
        names = ", ".join(cert["sans"]) if cert and cert["sans"] else "unknown names"
        return f"certificate is for other names ({names}), not {host}"
    if any(s in low for s in _UNKNOWN_CA):
        cert = served()
        issuer = f" (issued by {cert['issuer']})" if cert else ""
        return (
            f"unknown authority: the registry's certificate{issuer} is not signed by a CA the "
            "node trusts; run `evc cert push`"
        )
    why = next((s for s in _NO_ANSWER if s in low), None)
    if why:
        return f"registry not answering at {address} ({why})"
    if "name or service not known" in low or "name resolution" in low:
        return f"the node cannot resolve {host}"
    status = re.search(r"status code was (\d+) and not \[401\]", low)
    if status:
        return (
            f"https://{address}/v2/ answered HTTP {status.group(1)}, not 401: "
            "is it the EVC registry?"
        )
    if "no such file" in low:
        return "the node lacks the registry CA file: run `evc cert push`"
    return message


def explain(run: RunResult, address: str) -> RunResult:
    """Replace raw failure messages with plain reasons (in place; returns ``run``)."""
    cache: list[dict | None] = []

    def served() -> dict | None:
        if not cache:
            cache.append(registry_api.served_certificate(address))
        return cache[0]

    for r in run.hosts.values():
        if r.state == "unreachable":
            why = (r.message or "").rstrip(".").rpartition(": ")[2] or "no answer"
            r.message = f"node unreachable over SSH ({why.lower()})"
        elif r.state == "failed" and r.message:
            r.message = reason(r.message, address, served)
    return run


# ------------------------------------------------------------------ rotation to a new CA

PULLED = "credentials and pull probe"  # cert_push.yml's task that ends with the probe's pull

PHASES = {
    "trust-both": "push the new CA next to the old one",
    "switch-server": "serve a certificate from the new CA",
    "drop-old": "make the new CA the only one",
}


@dataclass
class PhaseResult:
    name: str  # a key of PHASES
    title: str
    status: str  # success, partial (some hosts unreachable), failed
    hosts: dict[str, dict[str, Any]]  # host -> {state, verified, message}
    artifacts_dir: str
    duration_s: float
    note: str | None = None


@dataclass
class RotationResult(Result):
    status: str  # complete, stopped
    resumed: bool  # an unfinished rotation was picked up
    stopped_at: str | None  # the phase that stopped it
    targets: list[str]  # every enrolled device that holds a pull credential
    old_ca: dict[str, Any]
    new_ca: dict[str, Any]
    phases: list[PhaseResult] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # host -> reason (stops a phase)
    unreachable: dict[str, str] = field(default_factory=dict)  # need `evc cert push` later
    server_cert: dict[str, Any] = field(default_factory=dict)
    next_steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "complete" and not self.failed and not self.unreachable


def rotate_ca(
    ws: Workspace,
    *,
    days: int = 825,
    progress: Progress = SILENT,
    after_phase: Callable[[PhaseResult], None] | None = None,
    client=None,
) -> RotationResult:
    """Move the registry and every node to a new CA so that no node that is online loses
    the ability to pull. Three phases, each one parallel Ansible run verified by a real
    pull on every node:

    1. trust-both: the new CA goes next to ``ca.crt`` on the nodes (as ``ca-next.crt``)
       and on the controller;
    2. switch-server: a server certificate from the new CA (same names), registry
       restarted; rolled back to the old certificate if any node then fails;
    3. drop-old: the new CA becomes the only ``ca.crt`` on the nodes, then in the
       workspace; the old CA's key and certificate are gone.

    The nodes are the enrolled devices that hold a pull credential: one that never had
    one, or was revoked, is left out (a rotation gives no access back).
    A registry that does not answer stops it before anything changes. A node that fails
    stops the rotation before the next phase; the new CA stays in
    ``.evc/registry/ca-next.*`` and a re-run picks up from there. Unreachable nodes are
    left out of the later phases and reported: they need `evc cert push` when back.
    ``after_phase`` is called after each phase that ran (tests check pulls there).
    """
    settings = registry.load(ws)
    pki.check_days(days)
    holders = pull_credentials.holders(ws)
    targets = [h for h in resolve_hosts(ws.inventory, "all") if h in holders]
    if not targets:
        raise UsageError(
            "No enrolled device holds a pull credential, so none would move to the new CA: "
            "`evc cert push TARGET` first (a rotation gives no access back)."
        )
    registry.api(ws).ping()
    registry.ro_api(ws).asks_for_credentials()
    f = registry.files(ws)
    nxt = f.next_ca()
    resumed = registry.rotation_pending(ws)
    if not resumed:
        pki.make_ca(nxt)
    registry.trust_on_controller(ws, settings)  # the controller trusts both from now on
    rotation = _Rotation(
        ws,
        RotationResult("stopped", resumed, None, targets, _ca(f.ca_cert), _ca(nxt.ca_cert)),
        progress,
        after_phase,
    )
    base = _vars(ws)
    drop = {**base, "registry_ca": str(nxt.ca_cert), "registry_ca_next": ""}
    if (
        rotation.phase("trust-both", base)
        and _switch_server(ws, rotation, base, days, client)
        and rotation.phase("drop-old", {**drop, "registry_probe_ca": "ca.crt"})
    ):
        pki.promote_next_ca(f)
        registry.trust_on_controller(ws, settings)
        registry.api(ws).ping()  # the new CA alone verifies it
        if queue.running(ws):  # its certificate, from the old CA, is no longer trusted
            queue.up(ws)  # renewed from the new CA, the server restarted
        rotation.result.status = "complete"
    return _finish(ws, rotation.result)


class _Rotation:
    """The phases of one rotate_ca run on the nodes that still answer."""

    def __init__(self, ws: Workspace, result: RotationResult, progress: Progress, after_phase):
        self.ws = ws
        self.result = result
        self.progress = progress
        self.after_phase = after_phase
        self.active = list(result.targets)

    def phase(self, name: str, extravars: dict, note: str | None = None) -> bool:
        """Run one phase (cert_push.yml); False when the rotation must stop there."""
        result = self.result
        nonces = pull_credentials.nonces(self.ws, self.active)
        run = _push(self.ws, ",".join(self.active), nonces, extravars, self.progress)
        hosts = {
            h: {"state": r.state, "verified": PULLED in r.outputs, "message": r.message}
            for h, r in sorted(run.hosts.items())
        }
        for host, r in hosts.items():
            if r["state"] == "unreachable":
                result.unreachable[host] = r["message"]
                self.active.remove(host)
            elif r["state"] == "failed":
                result.failed[host] = r["message"]
        bad = {r["state"] for r in hosts.values()} - {"ok", "changed"}
        phase = PhaseResult(
            name=name,
            title=PHASES[name],
            status="failed" if "failed" in bad else "partial" if bad else "success",
            hosts=hosts,
            artifacts_dir=run.artifacts_dir,
            duration_s=round(run.ended - run.started, 2),
            note=note,
        )
        result.phases.append(phase)
        if self.after_phase:
            self.after_phase(phase)
        if result.failed or not self.active:
            result.stopped_at = name
            return False
        return True


def _switch_server(ws: Workspace, rotation: _Rotation, base: dict, days: int, client) -> bool:
    """Phase 2: the registry serves a certificate from the new CA and every node pulls
    (with the CAs it already has); if one fails, the old certificate is served again."""
    f = registry.files(ws)
    nxt = f.next_ca()
    extravars = {**base, "registry_verify_only": True, "registry_probe_ca": registry.NEXT_CA_NAME}
    if pki.signed_by(f.server_cert, nxt.ca_cert):
        note = "the registry already served a certificate from the new CA"
        return rotation.phase("switch-server", extravars, note)
    backup = {p: p.read_bytes() for p in (f.server_cert, f.server_key)}
    try:
        pki.make_server_cert(nxt, registry.load(ws).hosts, days)
        registry_server.restart(ws, client=client)
        go_on = rotation.phase("switch-server", extravars)
    except EVCError:
        _restore(ws, backup, client)
        raise
    if rotation.result.failed:  # a node that pulled before cannot now
        _restore(ws, backup, client)
        rotation.result.phases[-1].note = "rolled back: the old certificate is served again"
    return go_on


def _ca(path) -> dict[str, Any]:
    info = pki.certificate_info(path)
    return {k: info[k] for k in ("subject", "sha256", "not_after", "days_left")}


def _restore(ws: Workspace, backup: dict, client) -> None:
    for path, data in backup.items():
        write_private(path, data)
    registry_server.restart(ws, client=client)


def _finish(ws: Workspace, result: RotationResult) -> RotationResult:
    result.server_cert = pki.certificate_info(registry.files(ws).server_cert)
    late = sorted(result.unreachable)
    if result.status == "complete":
        if late:
            result.next_steps.append(
                f"not moved to the new CA, so unable to pull until pushed: {', '.join(late)}; "
                f"run `evc cert push {','.join(late)}` when they are back"
            )
        return result
    hosts = ", ".join(f"{h} ({why})" for h, why in sorted(result.failed.items()))
    result.next_steps.append(
        f"stopped at phase {result.stopped_at} ({PHASES[result.stopped_at]})"
        + (f": failed on {hosts}" if hosts else ": no node answered")
        + ". The new CA is kept in .evc/registry/ca-next.*; fix that and run "
        "`evc registry rotate --new-ca` again to finish."
    )
    if late:
        result.next_steps.append(
            f"unreachable: {', '.join(late)} (they need `evc cert push` once the rotation "
            "is finished)"
        )
    return result
