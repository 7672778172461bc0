"""`evc grafana up|down`: a Grafana container on this machine with the EVC
provisioning, dashboards and database mounted, closed by default.

It needs a Grafana image with the frser-sqlite-datasource plugin, or network
access to fetch both (the image from its registry, the plugin from grafana.com
when the container starts).

Closed by default: a random admin password (0600 in ``.evc/``) reaches Grafana as a
read-only mounted file (``GF_SECURITY_ADMIN_PASSWORD__FILE``), never in its
environment or command line; anonymous viewing only when asked for; and the
database folder is mounted read-only. A WAL database opened read-only from a
read-only mount works only while its -wal and -shm files exist, and SQLite deletes
them when the last writer closes. So a keeper container (EVC's model-base image,
python3) holds a connection open for as long as Grafana runs, whether or not any
``evc`` process does (research: FINDINGS.md Q4).
"""

from __future__ import annotations

import os
import secrets
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from evc import db as evcdb
from evc import engine
from evc.config import Workspace
from evc.engine import docker_client
from evc.errors import EVCError, UsageError
from evc.grafana.builder import PLUGIN
from evc.grafana.provision import DASHBOARDS_ENV, DB_ENV, build
from evc.progress import SILENT, Progress

DEFAULT_IMAGE = "grafana/grafana-oss:11.6.0"
DB_DIR = "/var/lib/evc/db"  # the workspace's db/ folder, inside the containers
DASHBOARDS_DIR = "/var/lib/evc/dashboards"
PASSWORD_FILE = "grafana-admin-password"  # in the workspace's .evc/
PASSWORD_IN_CONTAINER = "/run/secrets/evc-grafana-admin-password"
ADMIN_USER = "admin"
WAIT_S = 120  # first start: Grafana migrates its own database and installs the plugin
KEEPER_WAIT_S = 20
# Holds the database open so that its -wal and -shm files outlive every evc process.
KEEPER_SCRIPT = """\
import signal, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("SELECT count(*) FROM sqlite_master").fetchall()
def stop(*_):
    db.close()  # the last connection out removes -wal and -shm: `down` leaves no trace
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    signal.pause()
"""


@dataclass
class UpResult:
    url: str
    container: str
    image: str
    keeper: str
    password_file: str
    password_created: bool  # a new password: shown once (`evc grafana password` again)
    anonymous: bool

    def to_dict(self) -> dict:
        return asdict(self)


def container_name(ws: Workspace) -> str:
    return f"evc-grafana-{ws.name}"


def keeper_name(ws: Workspace) -> str:
    return f"evc-grafana-db-{ws.name}"


def password_path(ws: Workspace) -> Path:
    return ws.private_dir / PASSWORD_FILE


def admin_password(ws: Workspace) -> str:
    """The admin password `evc grafana up` made; an error before the first ``up``."""
    try:
        return password_path(ws).read_text().strip()
    except FileNotFoundError:
        raise UsageError(
            f"No Grafana admin password yet: `evc grafana up` creates one (in {password_path(ws)})."
        ) from None


def _ensure_password(ws: Workspace, owner: str) -> bool:
    """Create the admin password file (0600) unless it exists; True when created now.
    It belongs to the uid Grafana runs as (the database's owner), which must read it."""
    path = password_path(ws)
    ws.ensure_private_dir()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        created = False
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))  # no newline: Grafana reads the file whole
        created = True
    uid, gid = (int(x) for x in owner.split(":"))
    st = path.stat()
    if (st.st_uid, st.st_gid) != (uid, gid) and os.geteuid() == 0:
        os.chown(path, uid, gid)
    os.chmod(path, 0o600)
    return created


def _image(client, image: str, progress: Progress) -> None:
    """The image, pulled when it is not here; a plain error when it cannot be had."""
    import docker.errors

    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    progress.log(f"pulling {image} ...")
    try:
        client.images.pull(image)
    except docker.errors.DockerException as exc:
        reason = str(getattr(exc, "explanation", None) or exc).splitlines()[0][:300]
        raise EVCError(
            f"No Grafana image {image!r} on this machine, and it cannot be pulled ({reason}). "
            f"`evc grafana up` needs a Grafana image: load or build one that has the {PLUGIN} "
            "plugin and pass it with --image (add --no-install-plugin when the plugin is "
            "already in it), or give this machine access to the image's registry. Without "
            "Docker, point an existing Grafana at the files from `evc grafana build` or use "
            "`evc grafana push --url URL` (README: Dashboards (Grafana))."
        ) from None


def _owner(path) -> str:
    st = path.stat()
    return f"{st.st_uid}:{st.st_gid}"


def _wait(container, url: str, wait_s: float) -> None:
    """Until Grafana answers /api/health; a clear error when it exits or stays silent."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=3) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        container.reload()
        if container.status in ("exited", "dead"):
            tail = container.logs(tail=15).decode(errors="replace").strip()
            raise EVCError(
                f"Grafana container {container.name} stopped during start-up. When its log "
                f"says it could not install {PLUGIN}, it has no network access: use an image "
                f"that has the plugin (--image NAME --no-install-plugin). Last log lines:\n{tail}"
            )
        time.sleep(1)
    raise EVCError(
        f"Grafana did not answer on {url} within {wait_s:.0f} s; "
        f"see `docker logs {container.name}`."
    )


def _keeper(client, ws: Workspace, owner: str, progress: Progress):
    """Start the container that holds the database open; wait for its -wal and -shm."""
    base, _ = engine.ensure_base_image(client, progress.log)
    image, _ = engine.ensure_image(client, "model-base", base, progress.log)
    db_dir = ws.root / "db"
    with engine.engine_errors(f"cannot start {keeper_name(ws)} from {image}"):
        container = client.containers.run(
            image,
            ["python3", "-c", KEEPER_SCRIPT, f"{DB_DIR}/evc.db"],
            name=keeper_name(ws),
            detach=True,
            user=owner,
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            volumes={str(db_dir): {"bind": DB_DIR, "mode": "rw"}},
            labels={"evc.workspace": str(ws.root)},
            restart_policy={"Name": "unless-stopped"},
        )
    deadline = time.monotonic() + KEEPER_WAIT_S
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            tail = container.logs(tail=10).decode(errors="replace").strip()
            raise EVCError(f"{container.name} stopped at once (it holds {db_dir / 'evc.db'} "
                           f"open for Grafana):\n{tail}")  # fmt: skip
        if (db_dir / "evc.db-wal").exists() and (db_dir / "evc.db-shm").exists():
            return container
        time.sleep(0.2)
    raise EVCError(f"{container.name} did not open {db_dir / 'evc.db'} within {KEEPER_WAIT_S} s.")


def up(
    ws: Workspace,
    image: str = DEFAULT_IMAGE,
    port: int = 3000,
    bind: str = "127.0.0.1",
    install_plugin: bool = True,
    *,
    allow_anonymous: bool = False,
    wait_s: float = WAIT_S,
    progress: Progress = SILENT,
) -> UpResult:
    """(Re)start this workspace's Grafana (and its database keeper); wait until it answers."""
    import docker.errors

    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is out of range 1..65535.")
    build(ws)
    evcdb.workspace_db(ws)  # the database exists, migrated, before Grafana opens it
    client = docker_client()
    _image(client, image, progress)
    down(ws)
    # Grafana and the keeper run as the database's owner: its files are 0600.
    owner = _owner(ws.root / "db" / "evc.db")
    created = _ensure_password(ws, owner)
    keeper = _keeper(client, ws, owner, progress)
    env = {
        DB_ENV: f"{DB_DIR}/evc.db",
        DASHBOARDS_ENV: DASHBOARDS_DIR,
        "GF_SECURITY_ADMIN_USER": ADMIN_USER,
        "GF_SECURITY_ADMIN_PASSWORD__FILE": PASSWORD_IN_CONTAINER,
        "GF_AUTH_ANONYMOUS_ENABLED": "true" if allow_anonymous else "false",
        "GF_USERS_ALLOW_SIGN_UP": "false",
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": f"{DASHBOARDS_DIR}/evc-fleet.json",
    }
    if allow_anonymous:
        env["GF_AUTH_ANONYMOUS_ORG_ROLE"] = "Viewer"
    if install_plugin:
        env["GF_INSTALL_PLUGINS"] = PLUGIN  # Grafana <= 11
        env["GF_PLUGINS_PREINSTALL_SYNC"] = PLUGIN  # Grafana >= 11.5
    grafana = ws.root / "grafana"
    name = container_name(ws)
    try:
        container = client.containers.run(
            image,
            name=name,
            detach=True,
            environment=env,
            ports={"3000/tcp": (bind, port)},
            user=owner,
            volumes={
                str(grafana / "provisioning"): {"bind": "/etc/grafana/provisioning", "mode": "ro"},
                str(grafana / "dashboards"): {"bind": DASHBOARDS_DIR, "mode": "ro"},
                str(ws.root / "db"): {"bind": DB_DIR, "mode": "ro"},
                str(password_path(ws)): {"bind": PASSWORD_IN_CONTAINER, "mode": "ro"},
            },
            labels={"evc.workspace": str(ws.root)},
            restart_policy={"Name": "unless-stopped"},
        )
    except docker.errors.APIError as exc:
        down(ws)
        raise EVCError(f"cannot start {name} from {image}: {exc.explanation or exc}") from None
    host = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
    url = f"http://{host}:{port}"
    _wait(container, url, wait_s)
    return UpResult(url, name, image, keeper.name, str(password_path(ws)), created,
                    allow_anonymous)  # fmt: skip


def down(ws: Workspace) -> bool:
    """Remove this workspace's Grafana container and its database keeper; False when
    there was neither."""
    import docker.errors

    client = docker_client()
    removed = False
    for name in (container_name(ws), keeper_name(ws)):
        try:
            client.containers.get(name).remove(force=True)
            removed = True
        except docker.errors.NotFound:
            pass
    return removed
