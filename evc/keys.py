"""The controller's SSH key and the devices' SSH host keys: pinned on first use in
``.evc/known_hosts``, refused when they change, never replaced."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from evc.config import Workspace
from evc.errors import EVCError, UsageError


def write_private(path: Path, data: bytes) -> None:
    """Write a secret 0600 from the first byte (no window with wider permissions)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (made 0600): one writer of a secret file at a
    time across `evc` processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def controller_key(ws: Workspace) -> tuple[Path, str]:
    """The workspace's SSH key pair (ed25519; private file 0600): (path, public key line).

    Every device, lab nodes included, authorises this one key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    keys = ws.ensure_private_dir() / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    private = keys / "id_ed25519"
    if not private.exists():
        key = Ed25519PrivateKey.generate()
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        write_private(private, data)
        pub = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        (keys / "id_ed25519.pub").write_text(pub.decode() + f" evc-{ws.name}\n")
    return private, (keys / "id_ed25519.pub").read_text().strip()


def pin_host_keys(ws: Workspace, keys: dict[str, str], drop: set[str] = frozenset()) -> None:
    """Set the known_hosts lines of the given names (and remove ``drop``) atomically.

    Names are known_hosts names: an address, or ``[address]:port``.
    """
    ws.ensure_private_dir()
    path = ws.known_hosts
    gone = set(keys) | set(drop)
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [ln for ln in lines if ln.split(" ", 1)[0] not in gone]
    kept += [f"{name} {key}" for name, key in sorted(keys.items())]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(ln + "\n" for ln in kept))
    os.replace(tmp, path)


def _known_host_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def pinned_keys(ws: Workspace, host: str, port: int = 22) -> set[str]:
    """The 'type base64' keys pinned for host:port."""
    name = _known_host_name(host, port)
    if not ws.known_hosts.exists():
        return set()
    return {
        " ".join(parts[1:3])
        for parts in (ln.split() for ln in ws.known_hosts.read_text().splitlines())
        if len(parts) >= 3 and name in parts[0].split(",")
    }


def scan_host_keys(host: str, port: int, timeout: int = 5) -> set[str]:
    """The host's keys as it presents them now (ssh-keyscan); empty if unreachable."""
    proc = subprocess.run(
        ["ssh-keyscan", "-T", str(timeout), "-p", str(port), "-t", "ed25519,ecdsa,rsa", host],
        capture_output=True,
        text=True,
    )
    return {" ".join(ln.split()[1:3]) for ln in proc.stdout.splitlines() if not ln.startswith("#")}


def check_host_key(ws: Workspace, host: str, port: int, keys: set[str]) -> set[str]:
    """Refuse a host whose key differs from the pinned one; returns the pinned keys."""
    known = pinned_keys(ws, host, port)
    if known and keys and not (known & keys):
        raise UsageError(
            f"The SSH host key of {host}:{port} has CHANGED since it was pinned in "
            f"{ws.known_hosts}. That may be a re-installed device or an impostor; EVC will "
            "not connect. If the change is expected, remove the old line from that file."
        )
    return known


def pin_host(ws: Workspace, host: str, port: int, keys: set[str]) -> None:
    """Trust on first use; a different key later is refused, never replaced."""
    known = check_host_key(ws, host, port, keys)
    if keys and not known:
        pin_host_keys(ws, {_known_host_name(host, port): sorted(keys)[0]})


def copy_key(ws: Workspace, device, password: str) -> None:
    """Authorise the controller key on ``device`` by logging in once with a password.

    The password goes to ssh through SSH_ASKPASS in the environment of that one
    process: never on a command line, never in a file. The host key must already be
    pinned (strict checking), so the password is only sent to the pinned host.
    """
    import os
    import stat
    import tempfile

    _, pubkey = controller_key(ws)
    keys_file = "~/.ssh/authorized_keys"
    remote = (
        "umask 077; mkdir -p ~/.ssh && k=$(cat) && "
        f'(grep -qxF "$k" {keys_file} 2>/dev/null || printf "%s\\n" "$k" >> {keys_file})'
    )
    with tempfile.TemporaryDirectory(prefix="evc-askpass-") as tmp:
        askpass = Path(tmp) / "askpass"
        askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$EVC_SSH_PASSWORD"\n')
        askpass.chmod(stat.S_IRWXU)
        env = {
            **os.environ,
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "EVC_SSH_PASSWORD": password,
        }
        proc = subprocess.run(
            [
                "ssh",
                "-p",
                str(device.port),
                "-o",
                f"UserKnownHostsFile={ws.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "ControlMaster=no",
                f"{device.user}@{device.host}",
                remote,
            ],  # fmt: skip
            input=pubkey + "\n",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["ssh failed"])[-1]
        raise EVCError(
            f"Could not install the controller key on {device.user}@{device.host}:"
            f"{device.port}: {reason}. Nothing was added."
        )
