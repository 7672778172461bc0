"""A real `evc serve` process on loopback for the API tests, with the fake fleet in it.

``python -m tests.unit.api_support ARGS`` runs `evc serve ARGS` with
``tests/unit/fake_fleet.FakeFleet`` standing in for ``run_playbook`` (node1 and node2
answer, node3 is down; ``EVC_FAKE_SHARD_S`` slows every shard), so jobs, deploys and
pings run through the server's real worker, database and event stream without Docker.
The lab tests start the same server without the fake (tests/lab/test_api_lab.py).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from evc.api import tokens

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server: its URL, tokens by role and the process."""

    url: str
    proc: subprocess.Popen
    tokens: dict[str, str] = field(default_factory=dict)
    verify: ssl.SSLContext | bool = True

    def client(self, role: str | None = "admin", **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, verify=self.verify,
                            **{"timeout": 30, **kw})  # fmt: skip

    def events(self, role="admin", timeout=60, **params) -> Iterator[tuple[str, dict]]:
        """(type, data) of each event of /api/events until the caller stops or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.client(role, timeout=httpx.Timeout(5, read=timeout)) as c:
            with c.stream("GET", "/api/events", params=params) as response:
                assert response.status_code == 200, response.read()
                kind = None
                for line in response.iter_lines():
                    if time.monotonic() > deadline:
                        raise TimeoutError("no more events wanted within the timeout")
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind:
                        yield kind, json.loads(line[6:])
                        kind = None


def make_tokens(ws) -> dict[str, str]:
    out = {}
    for role in tokens.ROLES:
        out[role], _ = tokens.create(ws, tokens.CreateOptions(name=f"t-{role}", role=role))
    return out


def start(ws, *args: str, fake: bool = True, env: dict | None = None, tls=False) -> Server:
    """Start `evc serve` (with the fake fleet unless ``fake`` is False) for ``ws``."""
    port = free_port()
    command = ["-m", "tests.unit.api_support"] if fake else ["-m", "evc"]
    proc = subprocess.Popen(
        [sys.executable, *command, "serve", "--bind", f"127.0.0.1:{port}", *args],
        cwd=REPO, env={**os.environ, "EVC_HOME": str(ws.root), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    scheme = "https" if tls else "http"
    server = Server(f"{scheme}://127.0.0.1:{port}", proc)
    if tls:
        server.verify = ssl.create_default_context(cafile=ws.root / ".evc/registry/ca.crt")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"evc serve exited {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{server.url}/api/health", timeout=1, verify=server.verify).is_success:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    stop(server)
    raise RuntimeError("evc serve did not answer within 60 s")


def stop(server: Server, kill: bool = False) -> str:
    """Stop the server (SIGTERM, or SIGKILL with ``kill``); returns its output."""
    if server.proc.poll() is None:
        server.proc.kill() if kill else server.proc.terminate()
    try:
        out, _ = server.proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        out, _ = server.proc.communicate()
    return out or ""


@contextmanager
def running(ws, *args: str, tokens: dict | None = None, **kw) -> Iterator[Server]:
    """A server for the test's duration, with a token per role (made unless given)."""
    server = start(ws, *args, **kw)
    server.tokens = tokens or make_tokens(ws)
    try:
        yield server
    finally:
        stop(server)


def _serve_with_fake_fleet() -> None:
    from evc import devices, logs
    from evc.cli import main
    from evc.infer import runner
    from evc.model import deploy
    from tests.unit.fake_fleet import FakeFleet

    delay = float(os.environ.get("EVC_FAKE_SHARD_S", "0"))

    class Fleet(FakeFleet):
        def _shard(self, host, extravars):
            time.sleep(delay)
            return super()._shard(host, extravars)

    fake = Fleet(down={"node3"})
    for module in (deploy, runner, devices, logs):
        module.run_playbook = fake
    main()


if __name__ == "__main__":
    _serve_with_fake_fleet()
