"""Starting `evc serve`: its TLS certificate from the workspace CA, uvicorn, the unit.

With ``--tls`` the server's certificate is signed by the workspace's CA (the one `evc
registry init` or `evc lab up` made, :mod:`evc.pki`), for the bound address, localhost
and this host's name (plus ``--tls-host`` names); it is kept in ``.evc/api/`` and made
again when it no longer fits (another CA, a missing name, under 30 days left). Clients
trust ``.evc/registry/ca.crt``.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

from evc import pki, registry
from evc.api.app import ServeSettings, create_app
from evc.config import Workspace
from evc.errors import UsageError
from evc.monitor import service_unit

CERT_DAYS = 397  # what browsers accept for a server certificate
RENEW_DAYS = 30


def _names(settings: ServeSettings, extra: tuple[str, ...]) -> list[str]:
    names = ["localhost", "127.0.0.1", socket.gethostname()]
    try:
        if not ipaddress.ip_address(settings.host).is_unspecified:
            names.insert(0, settings.host)
    except ValueError:  # a name
        names.insert(0, settings.host)
    return list(dict.fromkeys([*names, *extra]))


def certificate(
    ws: Workspace, settings: ServeSettings, extra: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    """(key, certificate) for ``--tls``, signed by the workspace CA."""
    ca = registry.files(ws)
    if not ca.ca_cert.exists() or not ca.ca_key.exists():
        raise UsageError(
            "--tls needs the workspace CA: run `evc registry init --host HOST` (or `evc lab "
            "up`) first; clients then trust .evc/registry/ca.crt."
        )
    folder = ws.ensure_private_dir() / "api"
    folder.mkdir(mode=0o700, exist_ok=True)
    key, cert = folder / "server.key", folder / "server.crt"
    pki.ensure_server_cert(ca, _names(settings, extra), CERT_DAYS, key, cert, RENEW_DAYS)
    return key, cert


def run(ws: Workspace, settings: ServeSettings, tls_hosts: tuple[str, ...] = ()) -> None:
    """Serve until SIGINT/SIGTERM; then running jobs stop as after Ctrl-C (resumable)."""
    import uvicorn

    key = cert = None
    if settings.tls:
        key, cert = certificate(ws, settings, tls_hosts)
    config = uvicorn.Config(
        create_app(ws, settings), host=settings.host, port=settings.port,
        ssl_keyfile=key and str(key), ssl_certfile=cert and str(cert),
        log_level="warning", access_log=False, server_header=False, proxy_headers=False,
        timeout_graceful_shutdown=3, lifespan="on",
    )  # fmt: skip
    print(f"EVC console and API at {settings.url} (Ctrl-C stops)", file=sys.stderr, flush=True)
    uvicorn.Server(config).run()


def systemd_unit(ws: Workspace, args: list[str]) -> str:
    """A systemd service unit that runs `evc serve ARGS` for this workspace."""
    return service_unit(
        ws, "serve", "API and web console", ["serve", *args],
        "SIGTERM: running jobs stop as after Ctrl-C and stay resumable.",
    )  # fmt: skip
