"""Lab nodes as containers: Docker-in-Docker with sshd and their own engine, or light
nodes (sshd and python only, no privileges).

Nodes get CPU/memory limits and labels from a hardware profile; this module
creates, starts, stops and removes their containers and waits until sshd and
dockerd answer inside. What the nodes are for (devices, registry, keys) is
composed in :mod:`evc.lab.fleet`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from evc.config import Workspace
from evc.engine import docker_client
from evc.errors import EVCError, UsageError

MAX_NODES = 64
LABEL = "evc.lab"
# Flags checked on this kind of machine: --privileged fails ("unable to apply
# caps"), all caps but SYS_RESOURCE with host cgroupns works.
NODE_RUN_OPTS: dict[str, Any] = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "cgroupns": "host",
    "tmpfs": {"/run": ""},
}


@dataclass(frozen=True)
class Profile:
    name: str
    cpus: float
    mem_gib: float
    labels: dict[str, str]
    arch: str = "amd64"  # arm64: the hybrid node of base_images/node-arm64 (README)
    engine: bool = True  # False: sshd and python only (base_images/node-light)

    @property
    def image(self) -> str:
        """Which node image (base_images/<image>) its containers run."""
        if not self.engine:
            return "node-light"
        return "node" if self.arch == "amd64" else f"node-{self.arch}"


PROFILES = {
    p.name: p
    for p in (
        Profile("rpi", 0.5, 1, {"hw": "raspberry-pi-4", "class": "small", "accelerator": "none"}),
        Profile("nuc", 1.0, 2, {"hw": "intel-nuc", "class": "medium", "accelerator": "none"}),
        Profile(
            "orin", 1.5, 4, {"hw": "jetson-orin-nano", "class": "large", "accelerator": "none"}
        ),
        # arm64 userland under qemu-user: several times slower than the hardware it
        # stands for, so it gets a whole CPU.
        Profile(
            "rpi-arm64",
            1.0,
            2,
            {
                "hw": "raspberry-pi-5",
                "class": "small",
                "accelerator": "none",
                "emulated": "qemu-user",
            },
            arch="arm64",
        ),  # fmt: skip
        # No Docker engine: ping, facts, telemetry. docker=none tells the plays that
        # need an engine to stop with a message (playbooks/tasks/needs_docker.yml).
        Profile(
            "light",
            0.25,
            0.25,
            {"hw": "light", "class": "light", "accelerator": "none", "docker": "none"},
            engine=False,
        ),  # fmt: skip
    )
}
DEFAULT_PROFILES = ("rpi", "nuc", "orin")


@dataclass
class LabNode:
    name: str
    container: str
    ip: str
    profile: str
    cpus: float
    mem_bytes: int
    state: str  # docker state: running, exited, ...
    ssh_ok: bool | None = None
    docker_ok: bool | None = None
    docker_version: str | None = None
    message: str | None = None


def validate_request(nodes: int, profiles: list[str]) -> None:
    if not 1 <= nodes <= MAX_NODES:
        raise UsageError(
            f"--nodes {nodes} is out of range: a lab has 1 to {MAX_NODES} nodes on one machine."
        )
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown:
        raise UsageError(
            f"Unknown profile {unknown[0]!r}; known profiles: {', '.join(PROFILES)} "
            "("
            + "; ".join(
                f"{p.name}: {p.cpus} CPU, {p.mem_gib:g} GiB, {p.arch}" for p in PROFILES.values()
            )
            + ")."
        )
    cpus = os.cpu_count() or 1
    too_big = [p for p in profiles if PROFILES[p].cpus > cpus]
    if too_big:
        raise UsageError(
            f"Profile {too_big[0]!r} needs {PROFILES[too_big[0]].cpus} CPUs; "
            f"this machine has {cpus}."
        )


class Nodes:
    """The node containers of one workspace's lab: names derive from ``ws.lab_name``."""

    def __init__(self, ws: Workspace, client=None):
        self.ws = ws
        self.name = ws.lab_name
        self.client = client or docker_client()
        self.network_name = f"evc-{self.name}"

    def container_name(self, node: str) -> str:
        return f"evc-{self.name}-{node}"

    def volume_name(self, node: str) -> str:
        return f"evc-{self.name}-{node}-docker"

    def containers(self) -> list:
        found = self.client.containers.list(all=True, filters={"label": f"{LABEL}={self.name}"})
        return sorted(found, key=lambda c: int(c.labels.get("evc.lab.index", "0")))

    def network(self):
        import docker.errors

        try:
            return self.client.networks.get(self.network_name)
        except docker.errors.NotFound:
            return None

    def _node(self, container) -> LabNode:
        host_cfg = container.attrs["HostConfig"]
        return LabNode(
            name=container.labels["evc.lab.node"],
            container=container.name,
            ip=container.labels["evc.lab.ip"],
            profile=container.labels["evc.lab.profile"],
            cpus=(host_cfg.get("NanoCpus") or 0) / 1e9,
            mem_bytes=host_cfg.get("Memory") or 0,
            state=container.status,
        )

    def nodes(self) -> list[LabNode]:
        return [self._node(c) for c in self.containers()]

    def get(self, node: str):
        for c in self.containers():
            if c.labels.get("evc.lab.node") == node:
                return c
        known = ", ".join(n.name for n in self.nodes()) or "none (run `evc lab up`)"
        raise UsageError(f"No lab node named {node!r} in lab {self.name!r}. Nodes: {known}.")

    def create(self, node: str, index: int, profile: Profile, ip: str, image: str, pubkey: str):
        api = self.client.api
        labels = {
            LABEL: self.name,
            "evc.lab.node": node,
            "evc.lab.index": str(index),
            "evc.lab.profile": profile.name,
            "evc.lab.ip": ip,
            **{f"evc.label.{k}": v for k, v in profile.labels.items()},
        }
        engine: dict[str, Any] = {"tmpfs": {"/run": ""}}  # a light node: no privileges
        if profile.engine:
            volume = self.volume_name(node)
            self.client.volumes.create(volume, labels={LABEL: self.name})
            engine = {
                "volumes": {
                    "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                    volume: {"bind": "/var/lib/docker", "mode": "rw"},
                },
                **NODE_RUN_OPTS,
            }
        return self.client.containers.create(
            image,
            name=self.container_name(node),
            hostname=node,
            detach=True,
            labels=labels,
            environment={"EVC_AUTHORIZED_KEY": pubkey},
            nano_cpus=int(profile.cpus * 1e9),
            mem_limit=int(profile.mem_gib * 2**30),
            network=self.network_name,
            networking_config={self.network_name: api.create_endpoint_config(ipv4_address=ip)},
            **engine,
        )

    def remove(self, container) -> None:
        import docker.errors

        node = container.labels.get("evc.lab.node", "")
        container.remove(force=True)
        try:
            self.client.volumes.get(self.volume_name(node)).remove(force=True)
        except docker.errors.NotFound:
            pass

    def wait_ready(self, names: list[str]) -> dict[str, str]:
        """Wait for sshd (+ dockerd where there is one) on each node; return each node's
        SSH host key.

        Each worker thread has a Docker client of its own: docker-py's exec takes over
        its connection's socket, and one client shared by 16 threads failed at 50
        nodes ("Bad file descriptor")."""
        local = threading.local()
        clients: list = []

        def ready(node: str) -> str:
            if not hasattr(local, "client"):
                local.client = docker_client()
                clients.append(local.client)
            c = local.client.containers.get(self.container_name(node))
            code, output = c.exec_run(["/usr/local/sbin/node-ready"])
            if code != 0:
                raise EVCError(f"lab node {node} did not come up: {output.decode().strip()}")
            return _host_key(c, node)

        try:
            with ThreadPoolExecutor(max_workers=min(len(names), 16) or 1) as pool:
                return dict(zip(names, pool.map(ready, names), strict=True))
        finally:
            for client in clients:
                client.close()

    def stop(self, node: str) -> LabNode:
        c = self.get(node)
        c.stop(timeout=2)
        c.reload()
        return self._node(c)

    def start(self, node: str) -> LabNode:
        c = self.get(node)
        c.start()
        self.wait_ready([node])
        c.reload()
        return self._node(c)


_HOST_KEY = re.compile(r"ssh-ed25519 [A-Za-z0-9+/]+={0,2}")


def exec_read(container, cmd: list[str], tries: int = 3) -> tuple[int, str]:
    """(exit code, output) of ``cmd`` run in ``container``, a command that only reads
    (it may run more than once).

    docker-py's exec_run sometimes answers exit 0 with no output at all when the
    command ends before its output stream is attached (docker/docker-py#2042, #3332).
    Seen here under load: `lab up` pinned an empty SSH host key for node3, and a lab
    test read an empty `docker inspect`. An empty success is asked again."""
    code, out = container.exec_run(cmd)
    for _ in range(tries - 1):
        if code != 0 or out:
            break
        time.sleep(0.2)
        code, out = container.exec_run(cmd)
    return code, out.decode(errors="replace")


def _host_key(container, node: str) -> str:
    """The node's SSH host key ("ssh-ed25519 BASE64"), read from inside the container;
    anything else is an error that shows what was read (every SSH run would fail on
    it with "No ED25519 host key is known")."""
    code, out = exec_read(container, ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])
    key = " ".join(out.split()[:2])
    if code != 0 or not _HOST_KEY.fullmatch(key):
        raise EVCError(f"lab node {node} has no usable SSH host key (exit {code}): {out[:200]!r}")
    return key
