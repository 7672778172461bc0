"""The registry's two containers (see :mod:`evc.registry`): start, restart after a
certificate or htpasswd change, stop, status, garbage collection, and the probe image
the lab pushes so that a node's pull can be tried without a model."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evc import pki, registry
from evc.config import Workspace
from evc.engine import docker_client, list_images
from evc.errors import EVCError, UsageError
from evc.options import Options, opt

CONFIG_PATH = "/etc/docker/registry/config.yml"
PROBE_REPO = "evc/probe"
PROBE_TAG = "1"


def probe_ref(address: str) -> str:
    """The probe image at the endpoint ADDRESS (what a node's test pull fetches)."""
    return f"{address}/{PROBE_REPO}:{PROBE_TAG}"


@dataclass
class ReadOnlyStatus:
    address: str
    container: str
    state: str  # running, exited, absent
    devices: list[str]  # the devices that hold a pull credential
    error: str | None = None


@dataclass
class RegistryStatus:
    address: str
    container: str
    state: str  # running, exited, absent
    image: str
    cert: dict[str, Any]
    ca: dict[str, Any]
    read_only: ReadOnlyStatus
    repositories: list[str] = field(default_factory=list)
    error: str | None = None
    next_ca: dict[str, Any] | None = None  # a rotation to this CA is under way

    @property
    def healthy(self) -> bool:
        """Both endpoints run and answer."""
        ro = self.read_only
        return self.state == ro.state == "running" and not self.error and not ro.error


def container_name(ws: Workspace) -> str:
    """Unique per workspace on one engine (many workspaces are named 'default')."""
    import hashlib

    return f"evc-registry-{ws.name}-{hashlib.sha256(str(ws.root).encode()).hexdigest()[:8]}"


def ro_container_name(ws: Workspace) -> str:
    """The read-only endpoint's container."""
    return container_name(ws) + "-ro"


def _config_yaml(read_only: bool) -> str:
    """distribution's configuration; the read-only one refuses every write (405) and
    runs no upload purger (it would start even in read-only mode, and write)."""
    storage = (
        ["  maintenance:", "    readonly: {enabled: true}", "    uploadpurging: {enabled: false}"]
        if read_only
        else ["  delete: {enabled: true}"]
    )
    return "\n".join(
        [
            "version: 0.1",
            "log: {level: info, fields: {service: evc-registry}}",
            "storage:",
            "  filesystem: {rootdirectory: /var/lib/registry}",
            *storage,
            "http:",
            "  addr: :5000",
            "  tls: {certificate: /certs/server.crt, key: /certs/server.key}",
            "  headers: {X-Content-Type-Options: [nosniff]}",
            "auth:",
            f"  htpasswd: {{realm: {'evc-pull' if read_only else 'evc-registry'}, "
            "path: /auth/htpasswd}",
            "",
        ]
    )


def _containers(ws: Workspace, settings: registry.RegistrySettings) -> dict[str, tuple[int, dict]]:
    """Container name -> (host port, volumes): the read-write endpoint, then the read-only
    one over the same data volume (mounted read-only) with the devices' htpasswd folder."""
    f = registry.files(ws)
    name = container_name(ws)
    certs = {
        str(f.server_cert): {"bind": "/certs/server.crt", "mode": "ro"},
        str(f.server_key): {"bind": "/certs/server.key", "mode": "ro"},
    }
    return {
        name: (settings.port, {
            str(f.root / "config.yml"): {"bind": CONFIG_PATH, "mode": "ro"},
            **certs,
            str(f.htpasswd): {"bind": "/auth/htpasswd", "mode": "ro"},
            f"{name}-data": {"bind": "/var/lib/registry", "mode": "rw"},
        }),
        ro_container_name(ws): (settings.read_only_port, {
            str(f.root / "config-ro.yml"): {"bind": CONFIG_PATH, "mode": "ro"},
            **certs,
            str(f.pull_dir): {"bind": "/auth", "mode": "ro"},
            f"{name}-data": {"bind": "/var/lib/registry", "mode": "ro"},
        }),
    }  # fmt: skip


class UpOptions(Options):
    """Run the registry container (TLS, auth, deletes, persistent storage)."""

    image: str | None = opt(None, help="Registry image (default: the one from init).")


def up(ws: Workspace, image: str | None = None, *, client=None) -> RegistryStatus:
    """Start (or keep) both endpoints and wait until each answers over verified TLS."""
    import docker.errors

    settings = registry.load(ws)
    if image and image != settings.image:
        settings.image = image
        registry.save(ws, settings)
    client = client or docker_client()
    f = registry.files(ws)
    (f.root / "config.yml").write_text(_config_yaml(read_only=False))
    (f.root / "config-ro.yml").write_text(_config_yaml(read_only=True))
    f.pull_dir.mkdir(mode=0o700, exist_ok=True)
    if not f.pull_htpasswd.exists():  # absent, distribution would invent a user of its own
        pki.write_htpasswd(f.pull_htpasswd, {})
    host_ip = settings.hosts[0] if _is_ip(settings.hosts[0]) else "0.0.0.0"
    for name, (port, volumes) in _containers(ws, settings).items():
        try:
            container = client.containers.get(name)
            if container.image.tags and settings.image not in container.image.tags:
                container.remove(force=True)
                container = None
        except docker.errors.NotFound:
            container = None
        if container is None:
            _run(ws, client, settings, name, (host_ip, port), volumes)
        elif container.status != "running":
            container.start()
    registry.trust_on_controller(ws, settings)
    _wait_answering(ws, [container_name(ws), ro_container_name(ws)])
    return status(ws, client=client)


def _run(
    ws: Workspace, client, settings: registry.RegistrySettings, name: str, bind, volumes
) -> None:
    import docker.errors

    try:
        client.images.get(settings.image)
    except docker.errors.ImageNotFound:
        raise EVCError(
            f"Registry image {settings.image!r} is not on this machine and cannot be pulled "
            "here; pass --image (the lab builds one: `evc lab up`)."
        ) from None
    try:
        client.containers.run(
            settings.image,
            name=name,
            detach=True,
            restart_policy={"Name": "unless-stopped"},
            ports={"5000/tcp": bind},
            volumes=volumes,
            labels={"evc.registry": str(ws.root)},
        )
    except docker.errors.APIError as exc:
        try:  # run() creates before it starts: leave no half-made container behind
            client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        raise EVCError(f"Could not start the registry on {bind[0]}:{bind[1]}: {exc}") from None


def restart(ws: Workspace, *, client=None, read_only: bool = True) -> RegistryStatus:
    """Restart the running endpoints (the read-only one too unless ``read_only`` is
    False) so that they read their certificate, key and htpasswd again (a second or two:
    Docker resolves the file mounts at each start), and wait for verified answers. A
    stopped one reads them when it starts.
    """
    import docker.errors

    client = client or docker_client()
    restarted = []
    names = (container_name(ws), ro_container_name(ws)) if read_only else (container_name(ws),)
    for name in names:
        try:
            container = client.containers.get(name)
        except docker.errors.NotFound:
            continue
        if container.status == "running":
            container.restart(timeout=5)
            restarted.append(name)
    _wait_answering(ws, restarted)
    return status(ws, client=client)


def rotate(ws: Workspace, *, days: int = 825, client=None) -> RegistryStatus:
    """A new server certificate from the same CA; nodes keep trusting the registry.

    Not while a rotation to a new CA is under way: that one finishes first.
    """
    if registry.rotation_pending(ws):
        raise UsageError(
            "A rotation to a new CA is under way (.evc/registry/ca-next.crt exists): finish "
            "it with `evc registry rotate --new-ca` first."
        )
    pki.make_server_cert(registry.files(ws), registry.load(ws).hosts, days)
    return restart(ws, client=client)


def rotate_password(ws: Workspace, *, client=None) -> RegistryStatus:
    """A new read-write password for the controller (generated, 0600): the old one, from a
    backup or a leaked file, stops working. Only the read-write endpoint restarts: nodes
    keep pulling from the read-only one."""
    registry.load(ws)  # refused before anything is written if there is no registry
    pki.make_credentials(registry.files(ws))
    return restart(ws, client=client, read_only=False)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _wait_answering(ws: Workspace, containers: list[str], seconds: float = 30) -> None:
    """Until the endpoints of ``containers`` answer over verified TLS (read-write: with
    the controller's credential; read-only: refusing a request without one)."""
    deadline = time.monotonic() + seconds
    checks = {
        container_name(ws): registry.api(ws).ping,
        ro_container_name(ws): registry.ro_api(ws).asks_for_credentials,
    }
    for name in containers:
        while True:
            try:
                checks[name]()
                break
            except EVCError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


def down(ws: Workspace, *, purge: bool = False, client=None) -> list[str]:
    """Stop and remove both registry containers.

    With ``purge`` also its stored images, the controller's local images tagged
    for it (the probe, pushed models), and the controller's trust in its CA
    (``certs.d/HOST:PORT``, when it holds this workspace's CA).
    """
    import docker.errors

    client = client or docker_client()
    removed = []
    name = container_name(ws)
    for container in (name, ro_container_name(ws)):
        try:
            client.containers.get(container).remove(force=True)
            removed.append(container)
        except docker.errors.NotFound:
            pass
    if purge:
        try:
            client.volumes.get(f"{name}-data").remove(force=True)
            removed.append(f"{name}-data")
        except docker.errors.NotFound:
            pass
        try:
            address = registry.load(ws).address
        except UsageError:
            return removed  # never initialised: nothing was tagged for it or trusted
        for _, tags in list_images(client):
            for tag in tags:
                if tag.startswith(address + "/"):
                    try:
                        client.images.remove(tag)
                    except docker.errors.ImageNotFound:  # another process removed it first
                        continue
                    removed.append(tag)
        trust, ca = registry.CERTS_D / address, registry.files(ws).ca_cert
        trusted = trust / "ca.crt"
        if ca.exists() and trusted.exists() and trusted.read_bytes() == ca.read_bytes():
            shutil.rmtree(trust)  # only when it is this workspace's CA: another's stays
            removed.append(str(trust))
    return removed


def _state(client, name: str) -> str:
    import docker.errors

    try:
        return client.containers.get(name).status
    except docker.errors.NotFound:
        return "absent"


def status(ws: Workspace, *, client=None) -> RegistryStatus:
    """Both endpoints: containers, certificates, repositories, who holds a pull credential."""
    settings = registry.load(ws)
    f = registry.files(ws)
    client = client or docker_client()
    state = _state(client, container_name(ws))
    read_only = ReadOnlyStatus(
        address=settings.ro_address,
        container=ro_container_name(ws),
        state=_state(client, ro_container_name(ws)),
        devices=sorted(pki.read_htpasswd(f.pull_htpasswd)),
    )
    result = RegistryStatus(
        address=settings.address,
        container=container_name(ws),
        state=state,
        image=settings.image,
        cert=pki.certificate_info(f.server_cert),
        ca=pki.certificate_info(f.ca_cert),
        read_only=read_only,
        next_ca=pki.certificate_info(f.next_ca().ca_cert)
        if registry.rotation_pending(ws)
        else None,
    )
    if state == "running":
        try:
            result.repositories = registry.api(ws).catalog()
        except EVCError as exc:
            result.error = str(exc)
    if read_only.state == "running":
        try:
            registry.ro_api(ws).asks_for_credentials()
        except EVCError as exc:
            read_only.error = str(exc)
    return result


def garbage_collect(ws: Workspace, *, client=None) -> str:
    """Run the registry's garbage collector (after deleting tags) inside its container."""
    client = client or docker_client()
    container = client.containers.get(container_name(ws))
    code, out = container.exec_run(
        ["registry", "garbage-collect", "--delete-untagged", CONFIG_PATH]
    )
    if code != 0:
        raise EVCError(f"registry garbage-collect failed: {out.decode(errors='replace')[-500:]}")
    return out.decode(errors="replace")


def push_probe(ws: Workspace, *, client=None) -> str:
    """Build the tiny busybox probe image on the controller and push it; returns its ref."""
    busybox = shutil.which("busybox")
    if not busybox:
        raise EVCError("busybox is not installed (apt-get install busybox-static; `make` does it).")
    settings = registry.load(ws)
    client = client or docker_client()
    ref = probe_ref(settings.address)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy(busybox, root / "bin" / "busybox")
        for applet in ("sh", "echo", "cat", "sleep", "ls"):
            (root / "bin" / applet).symlink_to("busybox")
        (root / "Dockerfile").write_text('FROM scratch\nCOPY bin /bin\nCMD ["/bin/sh"]\n')
        client.images.build(path=tmp, tag=ref, rm=True)
    registry.login(ws, client)
    for line in client.images.push(
        f"{settings.address}/{PROBE_REPO}", tag=PROBE_TAG, stream=True, decode=True
    ):
        if "error" in line:
            raise EVCError(f"pushing the probe image to {settings.address} failed: {line['error']}")
    return ref
