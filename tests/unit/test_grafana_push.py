"""`evc grafana push` against a small local HTTP server that answers the parts of
Grafana's API that grafana-client calls, and records every request."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evc.grafana import datasource
from evc.grafana.dashboards import all_dashboards
from tests.conftest import evc

TOKEN = "glsa_test_token"
UIDS = [d["uid"] for d in all_dashboards()]


class FakeGrafana(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, dict | None]] = []
        self.datasources: dict[str, dict] = {}
        self.folders: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}  # uid -> {"dashboard", "folderUid"}
        self.fail_dashboard: str | None = None  # answer 500 when this uid is saved
        self.unexpected: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def writes(self) -> list[tuple[str, str, dict | None]]:
        return [r for r in self.requests if r[0] != "GET"]


class _Handler(BaseHTTPRequestHandler):
    server: FakeGrafana

    def log_message(self, *args):
        pass

    def _send(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        s, path = self.server, self.path
        s.requests.append((self.command, path, body))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"message": "invalid API key"})
        route = (self.command, path)
        if route == ("GET", "/api/frontend/settings"):
            return self._send(200, {"buildInfo": {"version": "11.6.0", "edition": "Open Source"}})
        if m := re.fullmatch(r"/api/datasources/uid/([\w-]+)", path):
            uid = m.group(1)
            if self.command == "GET":
                if uid not in s.datasources:
                    return self._send(404, {"message": "Data source not found"})
                return self._send(200, {"id": 7, "orgId": 1, "readOnly": False, "version": 1,
                                        **s.datasources[uid]})  # fmt: skip
            if self.command == "PUT":
                s.datasources[uid] = body
                return self._send(200, {"message": "Datasource updated", "id": 7})
        if route == ("POST", "/api/datasources"):
            s.datasources[body["uid"]] = body
            return self._send(200, {"message": "Datasource added", "id": 7})
        if m := re.fullmatch(r"/api/folders/([\w-]+)", path):
            if self.command == "GET" and m.group(1) in s.folders:
                return self._send(200, {"id": 3, **s.folders[m.group(1)]})
            if self.command == "GET":
                return self._send(404, {"message": "folder not found"})
        if route == ("POST", "/api/folders"):
            s.folders[body["uid"]] = body
            return self._send(200, {"id": 3, **body})
        if m := re.fullmatch(r"/api/dashboards/uid/([\w-]+)", path):
            if m.group(1) not in s.dashboards:
                return self._send(404, {"message": "Dashboard not found"})
            saved = s.dashboards[m.group(1)]
            return self._send(200, {"dashboard": {"id": 11, "version": 2, **saved["dashboard"]},
                                    "meta": {"folderUid": saved["folderUid"]}})  # fmt: skip
        if route == ("POST", "/api/dashboards/db"):
            uid = body["dashboard"]["uid"]
            if uid == s.fail_dashboard:
                return self._send(500, {"message": "database is locked"})
            s.dashboards[uid] = {"dashboard": body["dashboard"], "folderUid": body["folderUid"]}
            return self._send(200, {"id": 11, "uid": uid, "status": "success", "version": 2})
        s.unexpected.append(f"{self.command} {path}")
        return self._send(404, {"message": "not emulated"})

    do_GET = do_POST = do_PUT = do_DELETE = _handle


@pytest.fixture
def grafana():
    server = FakeGrafana()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    assert not server.unexpected, server.unexpected


def _push(grafana, *args, token=TOKEN, check=0):
    return evc("grafana", "push", "--url", grafana.url, *args, env={"GRAFANA_TOKEN": token},
               check=check)  # fmt: skip


def _actions(proc) -> dict[str, str]:
    return {i["uid"]: i["action"] for i in json.loads(proc.stdout)["items"]}


def test_push_creates_everything_then_changes_nothing(workspace, grafana):
    first = _push(grafana, "--json")
    assert _actions(first) == {"evc-sqlite": "created", "evc": "created",
                               **{uid: "created" for uid in UIDS}}  # fmt: skip
    (ds,) = [b for m, p, b in grafana.writes() if p == "/api/datasources"]
    assert ds == datasource(str(workspace.root / "db" / "evc.db"))
    assert ds["type"] == "frser-sqlite-datasource" and ds["uid"] == "evc-sqlite"
    assert ds["jsonData"]["path"] == str(workspace.root / "db" / "evc.db")
    saved = [b for m, p, b in grafana.writes() if p == "/api/dashboards/db"]
    assert [b["dashboard"]["uid"] for b in saved] == UIDS
    for body in saved:
        assert body["overwrite"] is True and body["folderUid"] == "evc"
        assert "id" not in body["dashboard"]
        refs = {t["datasource"]["uid"] for p in body["dashboard"]["panels"] for t in p["targets"]}
        assert refs == {"evc-sqlite"}
    assert ("POST", "/api/folders", {"title": "EVC", "uid": "evc"}) in grafana.writes()

    writes = len(grafana.writes())
    second = _push(grafana, "--json")
    assert set(_actions(second).values()) == {"unchanged"}
    assert len(grafana.writes()) == writes  # idempotent: nothing written the second time
    table = _push(grafana)
    assert "unchanged" in table.stdout and "6 of 6 items fine" in table.stdout


def test_push_updates_what_differs(workspace, grafana):
    _push(grafana)
    grafana.datasources["evc-sqlite"]["jsonData"]["path"] = "/old/evc.db"
    grafana.dashboards["evc-fleet"]["dashboard"]["title"] = "edited by hand"
    proc = _push(grafana, "--json", "--db-path", "/srv/evc/db/evc.db")
    assert _actions(proc) == {"evc-sqlite": "updated", "evc": "unchanged", "evc-fleet": "updated",
                              **{uid: "unchanged" for uid in UIDS[1:]}}  # fmt: skip
    assert grafana.datasources["evc-sqlite"]["jsonData"]["path"] == "/srv/evc/db/evc.db"
    assert ("PUT", "/api/datasources/uid/evc-sqlite") in [(m, p) for m, p, _ in grafana.writes()]
    assert grafana.dashboards["evc-fleet"]["dashboard"]["title"] == "EVC / Fleet"


def test_a_failing_item_fails_the_push_but_not_the_others(workspace, grafana):
    grafana.fail_dashboard = "evc-models"
    proc = _push(grafana, "--json", check=1)
    result = json.loads(proc.stdout)
    assert result["ok"] is False
    failed = [i for i in result["items"] if i["action"] == "failed"]
    assert [(i["uid"], i["error"]) for i in failed] == [("evc-models", "database is locked")]
    assert set(grafana.dashboards) == set(UIDS) - {"evc-models"}


def test_rejected_token_is_a_clear_error(workspace, grafana):
    proc = _push(grafana, token="wrong", check=1)
    assert "rejected the token (401: invalid API key)" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert grafana.writes() == []


def test_token_is_prompted_for_when_the_variable_is_unset(workspace, grafana):
    proc = evc("grafana", "push", "--url", grafana.url, "--token-env", "EVC_NO_SUCH_TOKEN",
               "--json", input=f"{TOKEN}\n", check=0)  # fmt: skip
    assert set(_actions(proc).values()) == {"created"}
    assert TOKEN not in proc.stdout + proc.stderr


def test_unreachable_grafana_and_bad_url(workspace):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = evc("grafana", "push", "--url", f"http://127.0.0.1:{port}",
               env={"GRAFANA_TOKEN": TOKEN}, check=1)  # fmt: skip
    assert f"Grafana at http://127.0.0.1:{port} does not answer" in proc.stderr
    bad = evc("grafana", "push", "--url", "grafana:3000", env={"GRAFANA_TOKEN": TOKEN}, check=2)
    assert "expected http(s)://HOST" in bad.stderr
    for p in (proc, bad):
        assert "Traceback" not in p.stderr + p.stdout
