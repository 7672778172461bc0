"""Who may do what on EVC's Redis: the ACL file, regenerated from the devices table.

Users:

- ``default`` is off (no password, no commands): an unauthenticated client can do nothing.
- ``evc-admin`` is the controller's (every command). Its password is random, kept in
  ``.evc/queue/admin-password`` (0600) and never leaves the controller.
- one user per enrolled device that holds a registry pull credential
  (:mod:`evc.pull_credentials`). Its password is derived by the same helper from the same
  KEY and the device's nonce, with the nonce suffixed ``:queue`` so that it differs from
  the registry password: a node that can pull can derive it, one revocation (a new nonce,
  or none) ends both. It may always ``PING``, name its own connection (``CLIENT
  SETNAME``: what its puller serves, :func:`evc.queue.streams.puller_name`) and read
  (``XREAD``/``XRANGE``) its own announcement stream (``%R~``: no write); for each job
  it is granted
  (:func:`grant`) it may ``XREADGROUP``/``XACK``/``XCLAIM``/``XAUTOCLAIM``/``XPENDING`` on
  that job's work stream and ``XADD`` to its own results stream of that job, nothing else
  (two ACL selectors, so each command is allowed on its key alone).

The file holds only SHA-256 hashes of passwords (``#HEX``) and is written 0600 and
atomically; Redis reads it at start. A running server is brought in line user by user
(:func:`evc.queue.server.sync_acl`): ``ACL LOAD`` would close every client's connection
(Redis 7.0 does, the controller's included), and a job starting would cut the workers of
every other job. ``ACL SETUSER`` keeps a changed user's connections (its new rules apply
to their next command); ``ACL DELUSER`` closes them, which is what revoking a device or
changing its password needs.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable

from evc import db as evcdb
from evc import names, pull_credentials
from evc.config import Workspace
from evc.keys import locked, write_private
from evc.queue.files import files
from evc.queue.streams import announce_key, results_key, work_key

ADMIN = "evc-admin"
WORKER_COMMANDS = ("xreadgroup", "xack", "xclaim", "xautoclaim", "xpending")


def admin_password(ws: Workspace) -> str:
    """The controller's password (made on first use)."""
    f = files(ws)
    with locked(f.root / "acl.lock"):
        if not f.admin_password.exists():
            write_private(f.admin_password, secrets.token_urlsafe(32).encode())
        return f.admin_password.read_text()


def device_password(key: str, device: str, nonce: str) -> str:
    """A device's Redis password: the registry credential's derivation, its own nonce."""
    return pull_credentials.password(key, device, f"{nonce}:queue")


def _grants(ws: Workspace) -> dict[str, list[str]]:
    try:
        return json.loads(files(ws).grants.read_text())
    except FileNotFoundError:
        return {}


def grant(ws: Workspace, job: str, devices: Iterable[str]) -> dict[str, list[str]]:
    """Let ``devices`` work on ``job`` (replacing its previous list; none: the job is
    released). Returns every grant; :func:`sync_acl` makes it effective."""
    names.check(names.JOB_ID, job, "job id")
    devices = sorted({names.check(names.DEVICE_NAME, d, "device") for d in devices})
    f = files(ws)
    with locked(f.root / "acl.lock"):
        grants = _grants(ws)
        if devices:
            grants[job] = devices
        else:
            grants.pop(job, None)
        write_private(f.grants, json.dumps(grants, indent=1, sort_keys=True).encode())
    return grants


def _hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def device_rule(password_hash: str, device: str, jobs: Iterable[str]) -> list[str]:
    """One device's rules: PING, reading its own announcements, and per granted job its
    work and results streams (each selector is one argument, as ``ACL SETUSER`` takes it)."""
    jobs = sorted(jobs)
    rule = ["on", password_hash, "resetkeys", "resetchannels", "-@all", "+ping",
            "+client|setname"]  # fmt: skip
    rule.append(f"(%R~{announce_key(device)} +xread +xrange)")
    if jobs:
        work = " ".join([*(f"~{work_key(j)}" for j in jobs), *(f"+{c}" for c in WORKER_COMMANDS)])
        results = " ".join(f"~{results_key(j, device)}" for j in jobs)
        rule += [f"({work})", f"({results} +xadd)"]
    return rule


def rules(ws: Workspace) -> dict[str, list[str]]:
    """user -> rules, for ``default``, the admin and each device in the database that
    holds a pull credential."""
    db = evcdb.workspace_db(ws)
    enrolled = [r["name"] for r in db.query("SELECT name FROM devices ORDER BY name")]
    nonces = pull_credentials.nonces(ws, enrolled)
    key = pull_credentials.key(ws) if nonces else ""
    jobs: dict[str, list[str]] = {}
    for job, devices in _grants(ws).items():
        for device in devices:
            jobs.setdefault(device, []).append(job)
    users = {
        "default": ["off", "resetkeys", "resetchannels", "-@all"],
        ADMIN: ["on", _hash(admin_password(ws)), "~*", "&*", "+@all"],
    }
    for d, n in sorted(nonces.items()):
        users[d] = device_rule(_hash(device_password(key, d, n)), d, jobs.get(d, ()))
    return users


def render(users: dict[str, list[str]]) -> str:
    return "".join(f"user {name} {' '.join(r)}\n" for name, r in users.items())


def parse(text: str) -> dict[str, list[str]]:
    """What :func:`render` wrote (a selector ``(...)`` is one rule)."""
    users = {}
    for line in text.splitlines():
        words = re.findall(r"\([^)]*\)|\S+", line)
        if len(words) >= 2 and words[0] == "user":
            users[words[1]] = words[2:]
    return users


def password_hashes(rule: list[str]) -> set[str]:
    return {r for r in rule if r.startswith("#")}


def write(ws: Workspace) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Regenerate the ACL file; (the users it held, the users it holds now)."""
    f = files(ws)
    users = rules(ws)
    with locked(f.root / "acl.lock"):
        old = parse(f.acl.read_text()) if f.acl.exists() else {}
        if old != users:
            write_private(f.acl, render(users).encode())
        return old, users
