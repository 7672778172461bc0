"""A foreign arch's variant built on an enrolled builder instead of under emulation.

A builder is a device enrolled with role ``builder`` whose facts report the target arch
(an arm64 board for arm64 images). The controller drives the builder's own Docker
engine through an SSH tunnel it opens itself: OpenSSH with the workspace's key and its
pinned host keys, strict checking (an unpinned or changed key is refused, as for
Ansible), the engine's socket forwarded to a socket in a private temporary folder.
The build context (wheels downloaded on the controller: the builder needs no network),
EVC's base image when the builder lacks it, and the built image back (``docker save``
there, ``docker load`` here) travel through that tunnel. So the selftest runs natively
on the builder, and tagging, pushing and the catalogue stay the controller's one path:
the registry's write credential never leaves the controller (SECURITY.md says what a
builder is trusted with).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from evc import db as evcdb
from evc import engine
from evc.config import Workspace
from evc.errors import EVCError
from evc.keys import controller_key
from evc.model.catalogue import docker_arch
from evc.progress import SILENT, Progress

REMOTE_SOCKET = (
    "/var/run/docker.sock"  # the builder's engine; its SSH user must be allowed to use it
)
CONNECT_S = 20  # SSH login and the tunnel's socket, under a loaded builder


def candidates(ws: Workspace, arch: str) -> list[dict]:
    """Builders whose facts report ``arch``: online ones first, then by name."""
    rows = evcdb.workspace_db(ws).query(
        "SELECT * FROM devices WHERE role = 'builder' AND arch IS NOT NULL ORDER BY name"
    )
    found = [evcdb.device_from_row(r) for r in rows if docker_arch(r["arch"]) == arch]
    return sorted(found, key=lambda d: d["status"] != "online")


def _ssh_forward(ws: Workspace, device: dict, sock: Path) -> list[str]:
    key, _ = controller_key(ws)
    return [
        "ssh", "-N", "-p", str(device["port"]), "-i", str(key),
        "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={ws.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
        "-o", "ServerAliveCountMax=6", "-o", "ExitOnForwardFailure=yes",
        "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "LogLevel=ERROR",
        "-L", f"{sock}:{REMOTE_SOCKET}", f"{device['user']}@{device['host']}",
    ]  # fmt: skip


@contextmanager
def remote_engine(ws: Workspace, device: dict) -> Iterator:
    """A Docker client of ``device``'s engine through an SSH tunnel (closed on exit); an
    EVCError saying why when the device or its engine does not answer."""
    import docker

    where = f"{device['user']}@{device['host']}:{device['port']}"
    tmp = Path(tempfile.mkdtemp(prefix="evc-builder-"))  # 0700: only we reach the socket
    sock = tmp / "docker.sock"
    proc = subprocess.Popen(
        _ssh_forward(ws, device, sock),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = None
    try:
        deadline = time.monotonic() + CONNECT_S
        while not sock.exists():  # ssh listens there once it has logged in
            if proc.poll() is not None:
                said = (proc.stderr.read().strip().splitlines() or ["ssh failed"])[-1]
                raise EVCError(f"SSH to {where} failed: {said}")
            if time.monotonic() > deadline:
                raise EVCError(f"SSH to {where} did not log in within {CONNECT_S} s")
            time.sleep(0.1)
        try:
            client = docker.DockerClient(base_url=f"unix://{sock}", version="auto", timeout=900)
            client.ping()
        except Exception as exc:  # the SDK raises several types for "no engine"
            raise EVCError(
                f"the Docker engine at {where}:{REMOTE_SOCKET} does not answer: "
                f"{engine.explain(exc)}"
            ) from None
        yield client
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)


def connect(
    ws: Workspace, arch: str, stack: ExitStack, progress: Progress = SILENT
) -> tuple[object | None, str | None, list[str]]:
    """(client, builder's name, why others did not answer) of the first ``arch`` builder
    that answers, its tunnel held open by ``stack``; (None, None, reasons) when none does."""
    reasons = []
    for device in candidates(ws, arch):
        progress.status(f"connecting to builder {device['name']}")
        try:
            return stack.enter_context(remote_engine(ws, device)), device["name"], reasons
        except EVCError as exc:
            reasons.append(f"{device['name']}: {exc}")
    return None, None, reasons


def _load(dest, archive) -> None:
    """``docker load`` of a ``docker save`` stream; the engine's error as an EVCError."""
    for chunk in dest.api.load_image(archive):
        if "error" in chunk:
            raise EVCError(f"docker load failed: {chunk['error'].strip()}")


def ship(src, dest, ref: str, progress: Progress = SILENT) -> None:
    """Copy image ``ref`` (with its tag) from engine ``src`` to ``dest``, unless ``dest``
    holds the same image already, or ``src`` does not hold it (``dest`` pulls it then)."""
    want = engine.find_image(src, ref)
    if want is None or getattr(engine.find_image(dest, ref), "id", None) == want.id:
        return
    progress.log(f"copying the base image {ref} to the builder (once)")
    with engine.engine_errors(f"copying {ref} to the builder"):
        _load(dest, src.api.get_image(ref))


def fetch(src, dest, image_id: str, arch: str) -> None:
    """Bring the built image back from the builder (no tag: the controller tags it) and
    check that it is the image asked for, of ``arch``."""
    import docker.errors

    with engine.engine_errors("bringing the image back from the builder"):
        _load(dest, src.api.get_image(image_id))
    try:
        got = dest.images.get(image_id).attrs.get("Architecture")
    except docker.errors.ImageNotFound:
        raise EVCError(f"the builder's image {image_id} did not load here") from None
    if got != arch:
        dest.images.remove(image_id, force=True)
        raise EVCError(f"the builder returned a {got} image for a {arch} build; removed")
