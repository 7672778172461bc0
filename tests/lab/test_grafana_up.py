"""`evc grafana up` on the real Docker engine.

No Grafana image can be had here, so the closed-by-default set-up is proved with a
stand-in: an image from EVC's model-base (python3) that serves /api/health and
reads the database exactly as the datasource does (``file:...evc.db?mode=ro``),
started by the real `evc grafana up` with its real container settings (uid, mounts,
environment). The database belongs to a non-root uid, so the stand-in runs as one.
"""

import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from evc import engine
from evc.config import init_workspace
from evc.engine import docker_client
from tests.conftest import evc
from tests.lab.conftest import LAB_NAME

REPO = Path(__file__).resolve().parents[2]
UID = 65534  # nobody: the database's owner, so Grafana and the keeper run as it

STANDIN = r"""
import hashlib, http.server, os, sqlite3
DB = os.environ["EVC_GRAFANA_DB"]

def count():
    db = sqlite3.connect(f"file:{DB}?mode=ro", uri=True)  # as frser-sqlite-datasource does
    try:
        return str(db.execute("SELECT count(*) FROM audit_log").fetchone()[0])
    finally:
        db.close()

def write():
    errors = []
    db = sqlite3.connect(DB)
    try:
        db.execute("INSERT INTO audit_log (at, command) VALUES (1, 'grafana wrote')")
        db.commit()
        errors.append("database write: ALLOWED")
    except sqlite3.Error as exc:
        errors.append(f"database write: {exc}")
    finally:
        db.close()  # an open connection would keep -wal and -shm in place
    try:
        open(os.path.join(os.path.dirname(DB), "planted"), "w").close()
        errors.append("file write: ALLOWED")
    except OSError as exc:
        errors.append(f"file write: {exc}")
    return "\n".join(errors)

def password():
    with open(os.environ["GF_SECURITY_ADMIN_PASSWORD__FILE"], "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()

ROUTES = {"/api/health": lambda: "ok", "/count": count, "/write": write,
          "/password": password, "/uid": lambda: str(os.getuid())}

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            code, body = 200, ROUTES[self.path]()
        except Exception as exc:
            name = getattr(exc, "sqlite_errorname", "")  # SQLite's extended code, if any
            code, body = 500, f"{type(exc).__name__}: {exc} {name}"
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("", 3000), Handler).serve_forever()
"""

WRITER = """
import sys, time
from pathlib import Path
from evc import db as evcdb
db = evcdb.connect(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    evcdb.audit(db, "writer", [str(i)], 0, 0.0)
    time.sleep(0.05)
"""


def test_up_without_a_grafana_image_says_what_is_missing(workspace):
    image = "127.0.0.1:9/evc-test/no-grafana:none"  # not here, and its registry refuses
    proc = evc("grafana", "up", "--image", image, check=1)
    assert f"No Grafana image '{image}' on this machine, and it cannot be pulled" in proc.stderr
    assert "--image" in proc.stderr and "evc grafana push" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    names = [c.name for c in docker_client().containers.list(all=True)]
    assert f"evc-grafana-{workspace.name}" not in names
    assert f"evc-grafana-db-{workspace.name}" not in names
    assert not (workspace.private_dir / "grafana-admin-password").exists()
    assert (workspace.root / "grafana" / "dashboards" / "evc-fleet.json").is_file()
    assert evc("grafana", "down", check=0).stdout.strip().endswith("not running")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def standin(tmp_path):
    """A Grafana stand-in image built FROM EVC's model-base image."""
    client = docker_client()
    base, _ = engine.ensure_base_image(client)
    model_base, _ = engine.ensure_image(client, "model-base", base)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (
            ("Dockerfile",
             f'FROM {model_base}\nCOPY standin.py /\nCMD ["python3", "/standin.py"]\n'),
            ("standin.py", STANDIN),
        ):  # fmt: skip
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    tag = f"evc-test/grafana-standin:{LAB_NAME}"
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    yield tag
    client.images.remove(tag, force=True)


def test_up_is_closed_by_default_and_reads_the_database_read_only(tmp_path, standin):
    ws = init_workspace(
        tmp_path / "ws", name=re.sub(r"[^a-z0-9-]", "-", f"gf-{LAB_NAME}".lower())[:31]
    )
    env = {"EVC_HOME": str(ws.root)}
    db_dir = ws.root / "db"
    evc("device", "list", env=env, check=0)  # the database, migrated
    for path in (db_dir, *db_dir.iterdir()):
        os.chown(path, UID, UID)
    port = _free_port()
    client = docker_client()
    up = ["grafana", "up", "--image", standin, "--no-install-plugin", "--port", port]
    try:
        first = evc(*up, env=env, check=0)
        password_file = ws.private_dir / "grafana-admin-password"
        password = password_file.read_text()
        assert len(password) >= 32 and password_file.stat().st_mode & 0o777 == 0o600
        assert f"with the password {password} (shown once" in first.stdout
        assert evc("grafana", "password", env=env, check=0).stdout.strip() == password

        grafana = client.containers.get(f"evc-grafana-{ws.name}")
        keeper = client.containers.get(f"evc-grafana-db-{ws.name}")
        # The password is nowhere `docker inspect` shows: not in the environment, not
        # in the command line; Grafana reads it from a read-only mounted file.
        for container in (grafana, keeper):
            assert password not in json.dumps(container.attrs)
        config = grafana.attrs["Config"]
        assert "GF_AUTH_ANONYMOUS_ENABLED=false" in config["Env"]
        assert config["User"] == f"{UID}:{UID}"
        mounts = {m["Destination"]: m["RW"] for m in grafana.attrs["Mounts"]}
        assert mounts["/var/lib/evc/db"] is False
        assert mounts["/run/secrets/evc-grafana-admin-password"] is False
        assert {m["Destination"]: m["RW"] for m in keeper.attrs["Mounts"]} == {
            "/var/lib/evc/db": True
        }
        assert keeper.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert _get(port, "/uid") == (200, str(UID))
        assert _get(port, "/password") == (200, hashlib.sha256(password.encode()).hexdigest())

        # While EVC writes: fresh read-only connections work and see new rows. A reader
        # without write access to -shm once failed with "attempt to write a readonly
        # database" (once in ~15 suites; the extended code was not recorded then, the
        # stand-in reports it now); the next read (a dashboard's next refresh) works.
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db_dir / "evc.db"), "60"],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        seen, retried = [], []
        while writer.poll() is None:
            status, body = _get(port, "/count")
            if status != 200 and "readonly database SQLITE_READONLY" in body:
                retried.append(body)
                status, body = _get(port, "/count")
            assert status == 200, body
            seen.append(int(body))
        assert writer.returncode == 0 and len(set(seen)) > 3 and seen == sorted(seen)
        assert len(retried) * 10 <= len(seen), retried
        # No EVC process runs now; the keeper keeps the read path open.
        after = {_get(port, "/count") for _ in range(5)}
        assert len(after) == 1, after
        ((status, body),) = after
        assert status == 200 and int(body) >= seen[-1]
        total = int(body)
        # Through that mount, Grafana can write neither the database nor the folder.
        status, body = _get(port, "/write")
        assert "database write: ALLOWED" not in body and "file write: ALLOWED" not in body
        assert "readonly" in body and "Read-only file system" in body
        assert _get(port, "/count") == (200, str(total))

        # Without the keeper, the same read fails: that is what it is there for.
        keeper.stop(timeout=10)
        status, body = _get(port, "/count")
        assert status == 500 and "unable to open database file" in body
        keeper.start()
        deadline = time.monotonic() + 20
        while _get(port, "/count") != (200, str(total)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _get(port, "/count") == (200, str(total))

        # A second `up` keeps the password and does not print it; anonymous on request.
        again = evc(*up, "--allow-anonymous", env=env, check=0)
        assert password not in again.stdout and "evc grafana password" in again.stdout
        assert password_file.read_text() == password
        config = client.containers.get(f"evc-grafana-{ws.name}").attrs["Config"]
        assert "GF_AUTH_ANONYMOUS_ENABLED=true" in config["Env"]
        assert "GF_AUTH_ANONYMOUS_ORG_ROLE=Viewer" in config["Env"]
    finally:
        down = evc("grafana", "down", env=env, check=0)
    assert down.stdout.strip().endswith("removed")
    names = {c.name for c in client.containers.list(all=True)}
    assert not {f"evc-grafana-{ws.name}", f"evc-grafana-db-{ws.name}"} & names
