"""The private registry: distribution v2 in two containers over one storage volume.

The read-write endpoint (``port``, user ``evc``) is the controller's alone: it pushes
and deletes there. The nodes pull through the read-only endpoint (``ro_port``): a
second distribution process over the same volume, mounted read-only, with
``storage.maintenance.readonly`` on (every write answers 405) and its own htpasswd of
one user per device (evc.pull_credentials). A node thus holds only a credential that
can pull, and losing one node loses no other's. Both serve TLS with the same server
certificate.

Settings live in ``.evc/registry/registry.json`` beside the certificates
(evc.pki). The controller's own Docker engine trusts the CA through
``/etc/docker/certs.d/HOST:PORT/ca.crt`` so it can push; nodes get it with
``evc cert push``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evc import pki
from evc.config import Workspace
from evc.engine import docker_client
from evc.errors import EVCError, UsageError
from evc.options import Options, opt
from evc.registry_api import RegistryClient

DEFAULT_IMAGE = "registry:2"
DEFAULT_PORT = 5000
CONFIG_PATH = "/etc/docker/registry/config.yml"
CERTS_D = Path("/etc/docker/certs.d")
NEXT_CA_NAME = "ca-next.crt"  # the incoming CA's file in certs.d during `rotate --new-ca`
PROBE_REPO = "evc/probe"
PROBE_TAG = "1"


@dataclass
class RegistrySettings:
    hosts: list[str]
    port: int = DEFAULT_PORT
    image: str = DEFAULT_IMAGE
    user: str = pki.USER
    ro_port: int | None = None  # None (settings from before it existed): port + 1

    @property
    def address(self) -> str:
        """The read-write endpoint: the controller pushes and deletes here."""
        return f"{self.hosts[0]}:{self.port}"

    @property
    def read_only_port(self) -> int:
        return self.ro_port or self.port + 1

    @property
    def ro_address(self) -> str:
        """The read-only endpoint: the nodes pull here, with their own credentials."""
        return f"{self.hosts[0]}:{self.read_only_port}"


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


def files(ws: Workspace) -> pki.RegistryFiles:
    root = ws.ensure_private_dir() / "registry"
    root.mkdir(mode=0o700, exist_ok=True)
    return pki.RegistryFiles(root)


def container_name(ws: Workspace) -> str:
    """Unique per workspace on one engine (many workspaces are named 'default')."""
    import hashlib

    return f"evc-registry-{ws.name}-{hashlib.sha256(str(ws.root).encode()).hexdigest()[:8]}"


def ro_container_name(ws: Workspace) -> str:
    """The read-only endpoint's container."""
    return container_name(ws) + "-ro"


def load(ws: Workspace) -> RegistrySettings:
    path = files(ws).root / "registry.json"
    if not path.is_file():
        raise UsageError("No registry in this workspace yet: run `evc registry init --host H`.")
    return RegistrySettings(**json.loads(path.read_text()))


def save(ws: Workspace, settings: RegistrySettings) -> None:
    (files(ws).root / "registry.json").write_text(json.dumps(asdict(settings), indent=2))


def init(
    ws: Workspace,
    hosts: list[str],
    *,
    days: int = 825,
    password: str | None = None,
    port: int = DEFAULT_PORT,
    ro_port: int | None = None,
    image: str = DEFAULT_IMAGE,
) -> RegistrySettings:
    """CA, server certificate for ``hosts``, credentials and settings (refused if present).

    ``ro_port`` (default ``port`` + 1) is the read-only endpoint the nodes pull from.
    """
    f = files(ws)
    if (f.root / "registry.json").exists():
        raise UsageError(
            f"The registry is already initialised ({f.root}). Use `evc registry rotate` for "
            "new certificates."
        )
    ro_port = port + 1 if ro_port is None else ro_port
    for flag, value in (("--port", port), ("--ro-port", ro_port)):
        if not 1 <= value <= 65535:
            raise UsageError(f"{flag} {value} is out of range (1-65535).")
    if ro_port == port:
        raise UsageError(f"--ro-port {ro_port}: the read-only endpoint needs a port of its own.")
    pki.subject_alt_names(hosts)  # validate before writing anything
    pki.check_days(days)
    if password is not None and len(password) < 12:
        raise UsageError("The registry password must be at least 12 characters.")
    pki.make_ca(f)
    pki.make_server_cert(f, hosts, days)
    pki.make_credentials(f, password)
    settings = RegistrySettings(hosts=list(hosts), port=port, image=image, ro_port=ro_port)
    save(ws, settings)
    return settings


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


def _containers(ws: Workspace, settings: RegistrySettings) -> dict[str, tuple[int, dict]]:
    """Container name -> (host port, volumes): the read-write endpoint, then the read-only
    one over the same data volume (mounted read-only) with the devices' htpasswd folder."""
    f = files(ws)
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


def api(ws: Workspace) -> RegistryClient:
    """The registry's HTTP API as the controller uses it (read-write credential)."""
    settings = load(ws)
    return RegistryClient(settings.address, settings.user, password(ws), trusted_cas(ws))


def password(ws: Workspace) -> str:
    """The controller's read-write password (never leaves the controller)."""
    path = files(ws).password
    try:
        return path.read_text()
    except FileNotFoundError:
        raise EVCError(
            f"The registry's password file {path} is missing: restore .evc/registry/ from a "
            "backup, or start over with `evc registry down --purge` and `evc registry init`."
        ) from None


def ro_api(ws: Workspace) -> RegistryClient:
    """The read-only endpoint, without credentials: the controller holds none there."""
    return RegistryClient(load(ws).ro_address, None, None, trusted_cas(ws))


def rotation_pending(ws: Workspace) -> bool:
    """A ``rotate --new-ca`` was started and not finished: the incoming CA is on disk."""
    nxt = files(ws).next_ca()
    return nxt.ca_cert.is_file() and nxt.ca_key.is_file()


def trusted_cas(ws: Workspace) -> Path:
    """The file the controller verifies the registry with: the CA, plus the incoming one
    while a rotation to a new CA is under way.

    Named after its content: urllib3-future (which grafana-client brings in place of
    urllib3) keeps one TLS context per CA file name for the life of the process, so a
    file whose content changes would go on being trusted as it was.
    """
    import hashlib

    f = files(ws)
    pem = f.ca_cert.read_bytes()
    if rotation_pending(ws):
        pem += f.next_ca().ca_cert.read_bytes()
    bundle = f.root / f"trust-{hashlib.sha256(pem).hexdigest()[:16]}.pem"
    for stale in f.root.glob("trust-*.pem"):
        if stale != bundle:
            stale.unlink(missing_ok=True)
    if not bundle.exists():
        bundle.write_bytes(pem)
    return bundle


def trust_on_controller(ws: Workspace, settings: RegistrySettings) -> Path:
    """Let the controller's Docker engine verify the registry (it reads certs.d per pull).

    Docker takes every ``*.crt`` there as a CA: during a rotation to a new CA the
    incoming one sits next to ``ca.crt`` as ``ca-next.crt``.
    """
    f = files(ws)
    target = CERTS_D / settings.address / "ca.crt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(f.ca_cert.read_bytes())
    extra = target.parent / NEXT_CA_NAME
    if rotation_pending(ws):
        extra.write_bytes(f.next_ca().ca_cert.read_bytes())
    else:
        extra.unlink(missing_ok=True)
    return target


class UpOptions(Options):
    """Run the registry container (TLS, auth, deletes, persistent storage)."""

    image: str | None = opt(None, help="Registry image (default: the one from init).")


def up(ws: Workspace, image: str | None = None, *, client=None) -> RegistryStatus:
    """Start (or keep) both endpoints and wait until each answers over verified TLS."""
    import docker.errors

    settings = load(ws)
    if image and image != settings.image:
        settings.image = image
        save(ws, settings)
    client = client or docker_client()
    f = files(ws)
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
    trust_on_controller(ws, settings)
    _wait_answering(ws, [container_name(ws), ro_container_name(ws)])
    return status(ws, client=client)


def _run(ws: Workspace, client, settings: RegistrySettings, name: str, bind, volumes) -> None:
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


def restart(ws: Workspace, *, client=None) -> RegistryStatus:
    """Restart the running endpoints so that they read their certificate, key and
    htpasswd again (a second or two: Docker resolves the file mounts at each start), and
    wait for verified answers. A stopped one reads them when it starts.
    """
    import docker.errors

    client = client or docker_client()
    restarted = []
    for name in (container_name(ws), ro_container_name(ws)):
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
    if rotation_pending(ws):
        raise UsageError(
            "A rotation to a new CA is under way (.evc/registry/ca-next.crt exists): finish "
            "it with `evc registry rotate --new-ca` first."
        )
    pki.make_server_cert(files(ws), load(ws).hosts, days)
    return restart(ws, client=client)


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
        container_name(ws): api(ws).ping,
        ro_container_name(ws): ro_api(ws).asks_for_credentials,
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
            address = load(ws).address
        except UsageError:
            return removed  # never initialised: nothing was tagged for it or trusted
        for image in client.images.list():
            for tag in image.tags:
                if tag.startswith(address + "/"):
                    try:
                        client.images.remove(tag)
                    except docker.errors.ImageNotFound:  # another process removed it first
                        continue
                    removed.append(tag)
        trust, ca = CERTS_D / address, files(ws).ca_cert
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
    settings = load(ws)
    f = files(ws)
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
        next_ca=pki.certificate_info(f.next_ca().ca_cert) if rotation_pending(ws) else None,
    )
    if state == "running":
        try:
            result.repositories = api(ws).catalog()
        except EVCError as exc:
            result.error = str(exc)
    if read_only.state == "running":
        try:
            ro_api(ws).asks_for_credentials()
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
    import shutil

    busybox = shutil.which("busybox")
    if not busybox:
        raise EVCError("busybox is not installed (apt-get install busybox-static; `make` does it).")
    settings = load(ws)
    client = client or docker_client()
    ref = f"{settings.address}/{PROBE_REPO}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy(busybox, root / "bin" / "busybox")
        for applet in ("sh", "echo", "cat", "sleep", "ls"):
            (root / "bin" / applet).symlink_to("busybox")
        (root / "Dockerfile").write_text('FROM scratch\nCOPY bin /bin\nCMD ["/bin/sh"]\n')
        client.images.build(path=tmp, tag=f"{ref}:{PROBE_TAG}", rm=True)
    login(ws, client)
    for line in client.images.push(ref, tag=PROBE_TAG, stream=True, decode=True):
        if "error" in line:
            raise EVCError(f"pushing the probe image to {settings.address} failed: {line['error']}")
    return f"{ref}:{PROBE_TAG}"


def login(ws: Workspace, client) -> None:
    settings = load(ws)
    secret = password(ws)
    try:
        client.login(username=settings.user, password=secret, registry=settings.address)
    except Exception as exc:
        raise EVCError(f"login to the registry at {settings.address} failed: {exc}") from None
