"""`evc grafana up|down`: a Grafana container on this machine with the EVC
provisioning, dashboards and database mounted.

It needs a Grafana image with the frser-sqlite-datasource plugin, or network
access to fetch both (the image from its registry, the plugin from grafana.com
when the container starts).
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import asdict, dataclass

from evc import db as evcdb
from evc.config import Workspace
from evc.engine import docker_client
from evc.errors import EVCError, UsageError
from evc.grafana.builder import PLUGIN
from evc.grafana.provision import DASHBOARDS_ENV, DB_ENV, build
from evc.progress import SILENT, Progress

DEFAULT_IMAGE = "grafana/grafana-oss:11.6.0"
DB_DIR = "/var/lib/evc/db"  # the workspace's db/ folder, inside the container
DASHBOARDS_DIR = "/var/lib/evc/dashboards"
WAIT_S = 120  # first start: Grafana migrates its own database and installs the plugin


@dataclass
class UpResult:
    url: str
    container: str
    image: str

    def to_dict(self) -> dict:
        return asdict(self)


def container_name(ws: Workspace) -> str:
    return f"evc-grafana-{ws.name}"


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


def up(
    ws: Workspace,
    image: str = DEFAULT_IMAGE,
    port: int = 3000,
    bind: str = "127.0.0.1",
    install_plugin: bool = True,
    wait_s: float = WAIT_S,
    progress: Progress = SILENT,
) -> UpResult:
    """(Re)start this workspace's Grafana container and wait until it answers."""
    import docker.errors

    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is out of range 1..65535.")
    build(ws)
    evcdb.workspace_db(ws)  # the database exists, migrated, before Grafana opens it
    client = docker_client()
    _image(client, image, progress)
    name = container_name(ws)
    down(ws)
    env = {
        DB_ENV: f"{DB_DIR}/evc.db",
        DASHBOARDS_ENV: DASHBOARDS_DIR,
        "GF_AUTH_ANONYMOUS_ENABLED": "true",  # viewers need no login; admin/admin edits
        "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": f"{DASHBOARDS_DIR}/evc-fleet.json",
    }
    if install_plugin:
        env["GF_INSTALL_PLUGINS"] = PLUGIN  # Grafana <= 11
        env["GF_PLUGINS_PREINSTALL_SYNC"] = PLUGIN  # Grafana >= 11.5
    grafana = ws.root / "grafana"
    try:
        container = client.containers.run(
            image,
            name=name,
            detach=True,
            environment=env,
            ports={"3000/tcp": (bind, port)},
            # The database's folder is mounted writable because SQLite keeps a WAL
            # database's -shm file next to it; the datasource opens it with mode=ro.
            # Grafana runs as the database's owner so that it may.
            user=_owner(ws.root / "db" / "evc.db"),
            volumes={
                str(grafana / "provisioning"): {"bind": "/etc/grafana/provisioning", "mode": "ro"},
                str(grafana / "dashboards"): {"bind": DASHBOARDS_DIR, "mode": "ro"},
                str(ws.root / "db"): {"bind": DB_DIR, "mode": "rw"},
            },
            labels={"evc.workspace": str(ws.root)},
            restart_policy={"Name": "unless-stopped"},
        )
    except docker.errors.APIError as exc:
        raise EVCError(f"cannot start {name} from {image}: {exc.explanation or exc}") from None
    host = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
    url = f"http://{host}:{port}"
    _wait(container, url, wait_s)
    return UpResult(url, name, image)


def down(ws: Workspace) -> bool:
    """Remove this workspace's Grafana container; False when there was none."""
    import docker.errors

    try:
        docker_client().containers.get(container_name(ws)).remove(force=True)
    except docker.errors.NotFound:
        return False
    return True
