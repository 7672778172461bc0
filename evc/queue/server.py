"""EVC's own Redis for the workspace: `evc queue up|down|status`.

Debian's ``redis-server`` runs as a background process (``daemonize``) with a config that
EVC writes (``.evc/queue/redis.conf``, 0600): TLS only (``port 0``; the server
certificate is signed by the workspace CA, :mod:`evc.pki`), bound to the address the
nodes reach (``queue.host`` in evc.yaml, else the registry's address: the lab gateway,
else loopback), ``protected-mode yes``, users from an ACL file (:mod:`evc.queue.acl`),
append-only persistence, ``maxmemory`` with ``noeviction``. No secret is on its command
line or in its config: passwords are in the ACL file, as hashes.

The Debian package may also start a system redis on 127.0.0.1:6379 (its own service, on
a systemd host); EVC never uses it and leaves it alone.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import evc.queue.acl as acl
from evc import pki, registry
from evc.config import Workspace
from evc.errors import EVCError, Result, UsageError
from evc.keys import write_private
from evc.options import Options
from evc.progress import SILENT, Progress
from evc.queue.files import files

CERT_DAYS = 825
RENEW_DAYS = 30
START_SECONDS = 10.0


@dataclass
class QueueStatus(Result):
    state: str  # running, stopped
    address: str
    pid: int | None = None
    version: str | None = None
    users: list[str] = field(default_factory=list)
    streams: dict[str, int] = field(default_factory=dict)  # key -> length
    changed: bool = False  # what `up` did: started, restarted or reloaded its ACL
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "running" and not self.error


@dataclass
class DownResult(Result):
    stopped: bool
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return True


class UpOptions(Options):
    """Start EVC's Redis (TLS only, ACL users per device) or keep it running."""


def address(ws: Workspace) -> tuple[str, int]:
    """(host, port): evc.yaml's ``queue.host``, else the registry's address if it is an IP
    (the lab gateway, which the nodes reach), else loopback."""
    settings = ws.settings.queue
    host = settings.host
    if host is None:
        try:
            first = registry.load(ws).hosts[0]
            ipaddress.ip_address(first)
            host = first
        except (UsageError, ValueError):
            host = "127.0.0.1"
    return host, settings.port


def _quote(value: str) -> str:
    if any(c in value for c in "\n\r\0"):
        raise UsageError(f"{value!r}: a path for redis.conf cannot hold a line break.")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_config(ws: Workspace) -> str:
    f = files(ws)
    host, port = address(ws)
    ca = registry.files(ws).ca_cert
    paths = {
        "tls-cert-file": f.server_cert, "tls-key-file": f.server_key, "tls-ca-cert-file": ca,
        "aclfile": f.acl, "pidfile": f.pid, "logfile": f.log, "dir": f.data,
    }  # fmt: skip
    lines = [
        "# Written by `evc queue up`; regenerated on each start (edits are lost).",
        f"bind {host}",
        "port 0",
        f"tls-port {port}",
        "tls-auth-clients no",  # clients authenticate as ACL users, by password
        'tls-protocols "TLSv1.2 TLSv1.3"',
        "protected-mode yes",
        "daemonize yes",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        f"maxmemory {ws.settings.queue.maxmemory_mb}mb",
        "maxmemory-policy noeviction",
        "enable-debug-command no",
        "enable-module-command no",
        "enable-protected-configs no",
        *(f"{k} {_quote(str(v))}" for k, v in paths.items()),
    ]
    return "\n".join(lines) + "\n"


def configured(ws: Workspace) -> bool:
    """Whether `evc queue up` has run here (its config exists): the nodes then get a
    queue credential with their registry one (cert_push.yml)."""
    return files(ws).config.exists()


def _binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise EVCError(
            "redis-server is not installed (apt-get install redis-server; `make` does it)."
        )
    return found


def _pid(ws: Workspace) -> int | None:
    """The running server's pid from its pid file, if that process is a redis-server."""
    try:
        pid = int(files(ws).pid.read_text().strip())
        exe = os.readlink(f"/proc/{pid}/exe")
    except (FileNotFoundError, ValueError, OSError):
        return None
    return pid if Path(exe).name.startswith("redis") else None


def running(ws: Workspace) -> bool:
    """Whether the workspace's redis-server runs (its pid file names a live redis)."""
    return _pid(ws) is not None


def client(ws: Workspace, username: str, password: str, *, timeout: float = 5.0, retries: int = 3):
    """A verified TLS connection to the workspace's Redis as ``username``; a lost
    connection is tried again ``retries`` times (Redis restarting), briefly."""
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    host, port = address(ws)
    return redis.Redis(
        host=host, port=port, username=username, password=password, ssl=True,
        ssl_ca_certs=str(registry.trusted_cas(ws)), ssl_cert_reqs="required",
        ssl_check_hostname=True, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), retries),
    )  # fmt: skip


def admin(ws: Workspace, *, timeout: float = 5.0, retries: int = 3):
    """The controller's connection (every command)."""
    return client(ws, acl.ADMIN, acl.admin_password(ws), timeout=timeout, retries=retries)


def sync_acl(ws: Workspace) -> bool:
    """Regenerate the ACL file from the devices table and the job grants, and bring a
    running server in line (:mod:`evc.queue.acl` says why user by user): a device gone,
    or with a new password, is deleted first (its connections close). Whether anything
    changed."""
    old, new = acl.write(ws)
    if old == new or _pid(ws) is None:
        return old != new
    import redis

    r = admin(ws)
    try:
        if old.get(acl.ADMIN) != new[acl.ADMIN]:
            r.acl_load()  # the admin's own password changed: the file, all at once
            return True
        for user, rules in old.items():
            if user not in new or acl.password_hashes(rules) != acl.password_hashes(new[user]):
                r.acl_deluser(user)
        for user, rules in new.items():
            if old.get(user) != rules:
                r.execute_command("ACL", "SETUSER", user, "reset", *rules)
    except redis.RedisError as exc:
        raise EVCError(f"Redis refused the ACL rules of {files(ws).acl}: {exc}") from None
    return True


def sync_if_running(ws: Workspace) -> bool:
    """:func:`sync_acl` when the server runs (what the device and credential paths call:
    a revoked device's user goes at once, its connections cut); a stopped server reads
    its ACL file as it starts, and a workspace without a queue gets none."""
    return running(ws) and sync_acl(ws)


def _prepare(ws: Workspace) -> bool:
    """Certificate and config files; whether either changed (a running server then
    restarts to read them)."""
    ca = registry.files(ws)
    if not ca.ca_cert.exists() or not ca.ca_key.exists():
        raise UsageError(
            "The queue serves TLS from the workspace CA: run `evc registry init --host HOST` "
            "(or `evc lab up`) first."
        )
    f = files(ws)
    f.data.mkdir(mode=0o700, exist_ok=True)
    host, _ = address(ws)
    names = list(dict.fromkeys([host, "127.0.0.1", "localhost"]))
    renewed = pki.ensure_server_cert(ca, names, CERT_DAYS, f.server_key, f.server_cert, RENEW_DAYS)
    text = render_config(ws)
    if f.config.exists() and f.config.read_text() == text:
        return renewed
    write_private(f.config, text.encode())
    return True


def up(ws: Workspace, options: UpOptions | None = None, progress: Progress = SILENT) -> QueueStatus:
    """Start the server, or keep it: a running one with the same config and certificate
    only has its users brought in line (:func:`sync_acl`); otherwise it is restarted."""
    config_changed = _prepare(ws)
    if _pid(ws) is not None:
        if not config_changed:
            return _with_changed(status(ws), sync_acl(ws))
        progress.log("the queue's configuration or certificate changed: restarting it")
        down(ws)
    acl.write(ws)  # read by the server as it starts
    progress.log(f"starting redis-server on {':'.join(map(str, address(ws)))} (TLS)")
    _start(ws)
    return _with_changed(status(ws), True)


def _with_changed(st: QueueStatus, changed: bool) -> QueueStatus:
    st.changed = changed
    return st


def _start(ws: Workspace) -> None:
    import redis

    f = files(ws)
    f.pid.unlink(missing_ok=True)
    proc = subprocess.run(
        [_binary(), str(f.config)], capture_output=True, text=True, timeout=START_SECONDS
    )
    if proc.returncode != 0:
        raise EVCError(f"redis-server did not start: {(proc.stderr or proc.stdout).strip()[-800:]}")
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            if admin(ws, timeout=1.0, retries=0).ping():
                return
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise EVCError(
                    f"redis-server did not answer within {START_SECONDS:.0f} s ({exc}); the "
                    f"end of {f.log}:\n{_log_tail(ws)}"
                ) from None
        time.sleep(0.05)


def _log_tail(ws: Workspace, lines: int = 8) -> str:
    try:
        return "\n".join(files(ws).log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def down(ws: Workspace, *, timeout: float = 15.0) -> DownResult:
    """SIGTERM (Redis syncs its append-only file and removes its pid file), wait, make
    sure the pid file is gone."""
    pid = _pid(ws)
    if pid is None:
        files(ws).pid.unlink(missing_ok=True)
        return DownResult(stopped=False)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise EVCError(f"redis-server (pid {pid}) did not stop within {timeout:.0f} s.")
        time.sleep(0.05)
    files(ws).pid.unlink(missing_ok=True)
    return DownResult(stopped=True, pid=pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (a child of this process, in tests) has stopped
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def status(ws: Workspace) -> QueueStatus:
    """Running or stopped, address, version, ACL users, the length of each job stream."""
    import redis

    host, port = address(ws)
    st = QueueStatus(state="stopped", address=f"{host}:{port}", pid=_pid(ws))
    if st.pid is None:
        return st
    st.state = "running"
    try:
        r = admin(ws)
        st.version = r.info("server")["redis_version"]
        st.users = sorted(u if isinstance(u, str) else u.decode() for u in r.acl_users())
        for key in r.scan_iter(match="evc:job:*", _type="stream", count=500):
            st.streams[key.decode()] = r.xlen(key)
    except redis.RedisError as exc:
        st.error = f"redis-server (pid {st.pid}) does not answer as the admin: {exc}"
    return st
