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


CHROMIUM = "/usr/bin/chromium"  # Debian's, never one that `playwright install` fetches
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking"]


@dataclass
class Console:
    """A headless Chromium page on the server's console; every console message and
    page error is kept (a CSP violation shows up there)."""

    page: object
    server: Server
    shots: Path
    errors: list[str] = field(default_factory=list)

    def login(self, role: str) -> None:
        self.page.goto(self.server.url + "/")
        self.page.fill("#token", self.server.tokens[role])
        self.page.click("#login-form button[type=submit]")
        self.page.wait_for_selector("#live.on", timeout=15_000)

    def open(self, hash_: str, name: str | None = None) -> float:
        """Go to ``#/hash_``; wait until its page is drawn; seconds it took (a screenshot
        under ``shots`` as ``name``.png)."""
        started = time.monotonic()
        url = f"{self.server.url}/#/{hash_}"
        if self.page.url == url:
            self.page.reload()  # the token stays in the tab's session storage
        else:
            self.page.goto(url)
        page = hash_.split("/")[0]
        self.page.wait_for_selector(f"#view[data-page={page}][data-load-ms]", timeout=15_000)
        took = time.monotonic() - started
        if name:
            self.shot(name)
        return took

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@contextmanager
def console(server: Server, shots: Path) -> Iterator[Console]:
    """A fresh browser on ``server``'s console, its screenshots going to ``shots``."""
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.set_default_timeout(30_000)
            out = Console(page, server, shots)
            page.on("pageerror", lambda e: out.errors.append(f"page error: {e}"))
            page.on("console", lambda m: out.errors.extend([m.text] if m.type == "error" else []))
            yield out
        finally:
            browser.close()


def _serve_with_fake_fleet() -> None:
    from evc import devices, logs
    from evc.cli import main
    from evc.infer import nodes, runner
    from evc.model import deploy
    from tests.unit.fake_fleet import FakeFleet

    delay = float(os.environ.get("EVC_FAKE_SHARD_S", "0"))

    class Fleet(FakeFleet):
        def _shard(self, host, extravars):
            time.sleep(delay)
            return super()._shard(host, extravars)

    fake = Fleet(down={"node3"})
    for module in (deploy, runner, nodes, devices, logs):
        module.run_playbook = fake
    main()


if __name__ == "__main__":
    _serve_with_fake_fleet()
