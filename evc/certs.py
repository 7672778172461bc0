"""Registry trust on the nodes: push, revoke and check the CA (evc cert)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from evc import registry
from evc.ansible import RunResult, run_playbook
from evc.config import Workspace

PASSWORD_ENV = "EVC_REGISTRY_PASSWORD"


def _vars(ws: Workspace) -> dict:
    settings = registry.load(ws)
    return {
        "registry_address": settings.address,
        "registry_user": settings.user,
        "registry_ca": str(registry.files(ws).ca_cert),
        "probe_ref": f"{settings.address}/{registry.PROBE_REPO}:{registry.PROBE_TAG}",
    }


def push(ws: Workspace, target: str, system_trust: bool = False, progress=True) -> RunResult:
    """CA to certs.d (and the system store if asked), Docker login, verified by a pull."""
    password = registry.files(ws).password.read_text()
    return run_playbook(
        ws,
        "cert_push.yml",
        target,
        extravars={**_vars(ws), "registry_system_trust": system_trust},
        env={PASSWORD_ENV: password},
        progress=progress,
    )


def revoke(ws: Workspace, target: str, progress=True) -> RunResult:
    """Logout, remove the CA and the probe image; succeeds only if a pull then fails."""
    return run_playbook(ws, "cert_revoke.yml", target, extravars=_vars(ws), progress=progress)


@dataclass
class CertCheck:
    host: str
    state: str  # ok, failed, unreachable
    trusts_current_ca: bool | None
    server_cert_days_left: int
    message: str | None = None


def check(ws: Workspace, target: str, progress=True) -> list[CertCheck]:
    """Per node: does it hold the current CA; how long the server certificate has left."""
    from evc import pki

    f = registry.files(ws)
    want = hashlib.sha256(f.ca_cert.read_bytes()).hexdigest()
    days = pki.certificate_info(f.server_cert)["days_left"]
    run = run_playbook(ws, "cert_check.yml", target, extravars=_vars(ws), progress=progress)
    out = []
    for host, r in sorted(run.hosts.items()):
        stat = r.outputs.get("registry CA on node", {}).get("stat")
        trusts = None if stat is None else bool(stat.get("exists") and stat["checksum"] == want)
        out.append(CertCheck(host, r.state, trusts, days, r.message))
    return out
