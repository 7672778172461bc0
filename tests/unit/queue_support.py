"""A real redis-server for the queue tests, started by `evc.queue.server.up` on loopback
(TLS on, ACLs on), in a workspace with a CA and five enrolled devices of which node1,
node2, node4 and node5 hold a pull credential (so a Redis user) and node3 none."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evc import db as evcdb
from evc import pki, pull_credentials, registry
from evc.config import Workspace, init_workspace
from evc.queue import acl, server
from tests.unit.fake_fleet import DEVICES, add_devices

WORKERS = ("node1", "node2", "node4", "node5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_workspace(root: Path) -> Workspace:
    """A workspace whose queue listens on a free loopback port, with the CA and devices."""
    ws = init_workspace(root)
    with (root / "evc.yaml").open("a") as fh:
        fh.write(f"queue:\n  host: 127.0.0.1\n  port: {free_port()}\n")
    ws = Workspace.load(root)
    pki.make_ca(registry.files(ws))
    more = [
        {**DEVICES[1], "name": n, "host": f"10.0.0.{i}"} for i, n in ((14, "node4"), (15, "node5"))
    ]
    add_devices(ws, evcdb.workspace_db(ws), time.time(), [*DEVICES, *more])
    pull_credentials.issue(ws, WORKERS)
    return ws


@contextmanager
def running(root: Path) -> Iterator[Workspace]:
    ws = make_workspace(root)
    server.up(ws)
    try:
        yield ws
    finally:
        server.down(ws)


def device(ws: Workspace, name: str, **kwargs):
    """A connection as device ``name``, with the password the node derives."""
    nonce = pull_credentials.nonces(ws, [name])[name]
    password = acl.device_password(pull_credentials.key(ws), name, nonce)
    return server.client(ws, name, password, **kwargs)
