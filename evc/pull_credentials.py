"""Per-device credentials for the registry's read-only endpoint: all the registry access
a node has.

A device that `evc cert push` reaches gets a user named after it in the read-only
endpoint's htpasswd (``.evc/registry/pull/htpasswd``). Its password is
``sha256(KEY:DEVICE:NONCE)`` in hex, where KEY is one random controller secret
(``.evc/registry/pull-key``) and NONCE a random value drawn when the credential is
issued (``.evc/registry/pull-devices.json``); both files are 0600.

So the controller keeps what makes each plaintext rather than only its hash: a second
push, or a node re-imaged in the field, logs in again with the same password and
changes nothing, where a hash-only store would issue a new password (and change every
node) on every push. This is no new exposure: the controller's read-write password sits
beside it. Only KEY travels, through the pty to Ansible's ``vars_prompt`` (never an
argument, the environment or a file); the play derives each node's password from it
and the node's nonce (public: useless without KEY). One short answer serves any number
of nodes: a list of passwords would not, Ansible reads a prompt's answer as one
terminal line, at most 4095 characters (about 90 devices).

Revoking removes the device's htpasswd line first, then its nonce. The registry reads
the file again on the next request (it compares the mtime; the file is replaced
atomically in a folder mount), so the old password is refused (401) at once; a later
issue draws a new nonce, never the old password again.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable

from evc import pki, registry
from evc.config import Workspace
from evc.keys import locked, write_private

PROMPT = "registry_pull_key"  # cert_push.yml's vars_prompt that receives KEY


def password(key: str, device: str, nonce: str) -> str:
    """A device's password; cert_push.yml derives the same with ``hash('sha256')``."""
    return hashlib.sha256(f"{key}:{device}:{nonce}".encode()).hexdigest()


def _locked(f: pki.RegistryFiles):
    """One writer at a time: two `evc` processes may issue and revoke at once."""
    return locked(f.root / "pull.lock")


def _nonces(f: pki.RegistryFiles) -> dict[str, str]:
    try:
        return json.loads(f.pull_nonces.read_text())
    except FileNotFoundError:
        return {}


def key(ws: Workspace) -> str:
    """The controller's KEY (made on first use)."""
    f = registry.files(ws)
    with _locked(f):
        if not f.pull_key.exists():
            write_private(f.pull_key, secrets.token_urlsafe(32).encode())
        return f.pull_key.read_text()


def issue(ws: Workspace, devices: Iterable[str]) -> dict[str, str]:
    """A credential for each device that has none (an htpasswd line and a nonce, or a
    half of one left by an interrupted run: that gets a new nonce); device -> nonce."""
    devices = list(devices)
    secret = key(ws)
    f = registry.files(ws)
    with _locked(f):
        nonces, users = _nonces(f), pki.read_htpasswd(f.pull_htpasswd)
        fresh = {d: secrets.token_hex(16) for d in devices if d not in nonces or d not in users}
        if fresh:
            nonces.update(fresh)  # the nonce first: a line never exists without its nonce
            write_private(f.pull_nonces, json.dumps(nonces, indent=1, sort_keys=True).encode())
            users.update(
                (d, pki.bcrypt_hash(password(secret, d, n), pki.RANDOM_PASSWORD_ROUNDS))
                for d, n in fresh.items()
            )
            f.pull_dir.mkdir(mode=0o700, exist_ok=True)
            pki.write_htpasswd(f.pull_htpasswd, users)
        return {d: nonces[d] for d in devices}


def revoke(ws: Workspace, devices: Iterable[str]) -> list[str]:
    """Remove the devices' credentials: refused by the registry from its next request.
    Returns the devices that had one."""
    devices = set(devices)
    f = registry.files(ws)
    with _locked(f):
        nonces, users = _nonces(f), pki.read_htpasswd(f.pull_htpasswd)
        gone = sorted(devices & (set(nonces) | set(users)))
        if devices & set(users):  # the line first: the password stops working now
            pki.write_htpasswd(f.pull_htpasswd, {u: h for u, h in users.items() if u not in gone})
        if devices & set(nonces):
            kept = {d: n for d, n in nonces.items() if d not in gone}
            write_private(f.pull_nonces, json.dumps(kept, indent=1, sort_keys=True).encode())
        return gone


def nonces(ws: Workspace, devices: Iterable[str]) -> dict[str, str]:
    """device -> nonce for those of ``devices`` that hold a credential (none is issued)."""
    held = _nonces(registry.files(ws))
    return {d: held[d] for d in devices if d in held}


def holders(ws: Workspace) -> set[str]:
    """The devices whose credential the registry accepts."""
    return set(pki.read_htpasswd(registry.files(ws).pull_htpasswd))
