"""The controller's SSH key and the workspace's pinned host keys (known_hosts)."""

from __future__ import annotations

import os
from pathlib import Path

from evc.config import Workspace


def write_private(path: Path, data: bytes) -> None:
    """Write a secret 0600 from the first byte (no window with wider permissions)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


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
