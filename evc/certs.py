"""Registry trust on the nodes: push, revoke and check the CA (evc cert).

Failures are reported per host in plain words: the playbooks find out why a node
cannot reach the registry without showing the secret (see cert_push.yml), and
:func:`explain` turns the TLS, connection and SSH errors into reasons that name
the date, the names or the address involved.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from evc import pki, registry
from evc.ansible import RunResult, run_playbook
from evc.config import Workspace

PASSWORD_ENV = "EVC_REGISTRY_PASSWORD"


def _vars(ws: Workspace) -> dict:
    """Extravars of the cert playbooks: paths and names, never the secret.

    While a rotation to a new CA is under way the nodes get both CAs, and the
    probe verifies with the one that signed the server certificate.
    """
    settings = registry.load(ws)
    f = registry.files(ws)
    pending = registry.rotation_pending(ws)
    switched = pending and pki.signed_by(f.server_cert, f.next_ca().ca_cert)
    return {
        "registry_address": settings.address,
        "registry_user": settings.user,
        "registry_ca": str(f.ca_cert),
        "registry_ca_next": str(f.next_ca().ca_cert) if pending else "",
        "registry_probe_ca": registry.NEXT_CA_NAME if switched else "ca.crt",
        "probe_ref": f"{settings.address}/{registry.PROBE_REPO}:{registry.PROBE_TAG}",
    }


def _push(ws: Workspace, target: str, extravars: dict, progress: bool) -> RunResult:
    password = registry.files(ws).password.read_text()
    run = run_playbook(
        ws,
        "cert_push.yml",
        target,
        extravars=extravars,
        env={PASSWORD_ENV: password},
        progress=progress,
    )
    return explain(run, extravars["registry_address"])


def push(ws: Workspace, target: str, system_trust: bool = False, progress=True) -> RunResult:
    """CA to certs.d (and the system store if asked or already there), Docker login, verified
    by a pull; a failure says why, per host."""
    return _push(ws, target, {**_vars(ws), "registry_system_trust": system_trust}, progress)


def revoke(ws: Workspace, target: str, progress=True) -> RunResult:
    """Logout, remove the CA and the probe image; succeeds only if a pull then fails."""
    run = run_playbook(ws, "cert_revoke.yml", target, extravars=_vars(ws), progress=progress)
    return explain(run, registry.load(ws).address)


@dataclass
class CertCheck:
    host: str
    state: str  # ok, failed, unreachable
    trusts_current_ca: bool | None
    server_cert_days_left: int
    message: str | None = None


def check(ws: Workspace, target: str, progress=True) -> list[CertCheck]:
    """Per node: does it hold the current CA; does the registry answer it over verified
    TLS; how long the server certificate has left."""
    f = registry.files(ws)
    want = hashlib.sha256(f.ca_cert.read_bytes()).hexdigest()
    days = pki.certificate_info(f.server_cert)["days_left"]
    extravars = _vars(ws)
    run = run_playbook(ws, "cert_check.yml", target, extravars=extravars, progress=progress)
    explain(run, extravars["registry_address"])
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
        out.append(CertCheck(host, r.state, trusts, days, message))
    return out


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
            cache.append(registry.served_certificate(address))
        return cache[0]

    for r in run.hosts.values():
        if r.state == "unreachable":
            why = (r.message or "").rstrip(".").rpartition(": ")[2] or "no answer"
            r.message = f"node unreachable over SSH ({why.lower()})"
        elif r.state == "failed" and r.message:
            r.message = reason(r.message, address, served)
    return run
