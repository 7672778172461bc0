"""Where EVC's Redis keeps its state: ``.evc/queue/`` (0700).

Its configuration, ACL file, admin password and job grants are 0600; the server's TLS
key is 0600 (signed by the workspace CA, :mod:`evc.pki`); ``data/`` holds its append-only
file, ``redis.pid`` and ``redis.log`` say whether and how it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evc.config import Workspace


@dataclass(frozen=True)
class QueueFiles:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "redis.conf"

    @property
    def acl(self) -> Path:
        return self.root / "users.acl"

    @property
    def admin_password(self) -> Path:
        return self.root / "admin-password"

    @property
    def grants(self) -> Path:
        return self.root / "grants.json"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def pid(self) -> Path:
        return self.root / "redis.pid"

    @property
    def log(self) -> Path:
        return self.root / "redis.log"


def files(ws: Workspace) -> QueueFiles:
    root = ws.ensure_private_dir() / "queue"
    root.mkdir(mode=0o700, exist_ok=True)
    return QueueFiles(root)
