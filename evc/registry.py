"""The private registry as the controller knows it: settings, certificates and
credentials, the controller's trust in its CA, and clients of its HTTP API.

The registry is distribution v2 in two containers over one storage volume (started,
checked and stopped by :mod:`evc.registry_server`). The read-write endpoint (``port``,
user ``evc``) is the controller's alone: it pushes and deletes there. The nodes pull
through the read-only endpoint (``ro_port``): a second distribution process over the
same volume, mounted read-only, with ``storage.maintenance.readonly`` on (every write
answers 405) and its own htpasswd of one user per device (evc.pull_credentials). A node
thus holds only a credential that can pull, and losing one node loses no other's. Both
serve TLS with the same server certificate.

Settings live in ``.evc/registry/registry.json`` beside the certificates
(evc.pki). The controller's own Docker engine trusts the CA through
``/etc/docker/certs.d/HOST:PORT/ca.crt`` so it can push; nodes get it with
``evc cert push``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from evc import pki
from evc.config import Workspace
from evc.errors import EVCError, UsageError
from evc.registry_api import RegistryClient

DEFAULT_IMAGE = "registry:2"
DEFAULT_PORT = 5000
CERTS_D = Path("/etc/docker/certs.d")
NEXT_CA_NAME = "ca-next.crt"  # the incoming CA's file in certs.d during `rotate --new-ca`


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


def files(ws: Workspace) -> pki.RegistryFiles:
    root = ws.ensure_private_dir() / "registry"
    root.mkdir(mode=0o700, exist_ok=True)
    return pki.RegistryFiles(root)


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


def login(ws: Workspace, client) -> None:
    settings = load(ws)
    secret = password(ws)
    try:
        client.login(username=settings.user, password=secret, registry=settings.address)
    except Exception as exc:
        raise EVCError(f"login to the registry at {settings.address} failed: {exc}") from None
