"""The lab as a fleet: images, network and nodes, then what makes them devices.

``Lab.up`` brings the lab to exactly N nodes (:mod:`evc.lab.nodes`), pins each
node's SSH host key read from inside its container (not by trusting the
network), enrols the nodes as ordinary devices through :mod:`evc.devices`, and
starts the workspace registry at the lab network's gateway with its probe image, and
the workspace's queue (:mod:`evc.queue.server`, bound to that gateway: pull mode).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from evc import devices, engine, registry, registry_server
from evc.ansible import run_playbook
from evc.config import Workspace
from evc.connections import close_connections
from evc.errors import Result, UsageError
from evc.keys import controller_key, pin_host_keys
from evc.lab import worker
from evc.lab.network import check_subnet, forget_neighbour
from evc.lab.nodes import DEFAULT_PROFILES, LABEL, PROFILES, LabNode, Nodes, validate_request
from evc.progress import SILENT, Progress
from evc.queue import server as queue


@dataclass
class LabUpResult(Result):
    lab: str
    network: str
    subnet: str
    gateway: str
    nodes: list[LabNode]
    registry: str | None = None  # address the nodes pull from (the read-only endpoint)
    queue: str | None = None  # the queue's address (pull-mode inference)
    created: list[str] = field(default_factory=list)
    images_built: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    ping: Any = None  # evc.ansible.RunResult

    @property
    def ok(self) -> bool:
        return self.ping is not None and self.ping.ok

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ping"] = self.ping.to_dict() if self.ping else None
        return out


class Lab:
    """The lab of one workspace: its node containers plus the devices and registry."""

    def __init__(self, ws: Workspace, client=None):
        self.ws = ws
        self.containers = Nodes(ws, client)
        self.name = self.containers.name
        self.client = self.containers.client

    def nodes(self) -> list[LabNode]:
        return self.containers.nodes()

    # ------------------------------------------------------------------ up

    def up(
        self,
        *,
        nodes: int = 3,
        profiles: list[str] | None = None,
        subnet: str | None = None,
        progress: Progress = SILENT,
    ) -> LabUpResult:
        """Bring the lab to exactly ``nodes`` running nodes; undo what it made on failure."""
        c = self.containers
        profiles = list(profiles or DEFAULT_PROFILES)
        validate_request(nodes, profiles)
        subnet = subnet or self.ws.lab_subnet
        net = check_subnet(self.client, subnet, c.network_name, nodes)
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        result = LabUpResult(self.name, c.network_name, str(net), str(net[1]), [])
        undo: list = []
        try:
            base, built = engine.ensure_base_image(self.client, progress.log)
            result.images_built += [base] if built else []
            images = {}  # only the node images these profiles run
            for kind in sorted({PROFILES[p].image for p in profiles}):
                if kind == "node-arm64":
                    images[kind], made = engine.ensure_arm64_node_image(self.client, progress.log)
                else:
                    images[kind], built = engine.ensure_image(self.client, kind, base, progress.log)
                    made = [images[kind]] if built else []
                result.images_built += [i for i in made if i not in result.images_built]
            timings["images_s"] = time.monotonic() - t0
            _, pubkey = controller_key(self.ws)
            network = c.network()
            if network is None:
                import docker.types

                ipam = docker.types.IPAMConfig(
                    pool_configs=[docker.types.IPAMPool(subnet=str(net), gateway=str(net[1]))]
                )
                network = self.client.networks.create(
                    c.network_name, driver="bridge", ipam=ipam, labels={LABEL: self.name}
                )
                undo.append(network.remove)
                result.created.append(f"network {c.network_name}")
            t1 = time.monotonic()
            wanted = {}
            for i in range(1, nodes + 1):
                profile = PROFILES[profiles[(i - 1) % len(profiles)]]
                wanted[f"node{i}"] = (i, profile, str(net[9 + i]))
            image_ids = {kind: self.client.images.get(i).id for kind, i in images.items()}
            for container in c.containers():
                spec = wanted.get(container.labels.get("evc.lab.node"))
                stale = (
                    spec is None
                    or container.labels.get("evc.lab.profile") != spec[1].name
                    or container.labels.get("evc.lab.ip") != spec[2]
                    or container.image.id != image_ids[spec[1].image]
                )
                if stale:
                    c.remove(container)
            existing = {x.labels["evc.lab.node"]: x for x in c.containers()}
            for node, (index, profile, ip) in wanted.items():
                container = existing.get(node)
                if container is None:
                    container = c.create(node, index, profile, ip, images[profile.image], pubkey)
                    undo.append(lambda x=container: c.remove(x))
                    result.created.append(f"node {node}")
                if container.status != "running":
                    container.start()
            ready = c.wait_ready(list(wanted))
            timings["nodes_s"] = time.monotonic() - t1
            pin_host_keys(self.ws, {ip: ready[n] for n, (_, _, ip) in wanted.items()})
            self.register()
            t3 = time.monotonic()
            registry_image, built = engine.ensure_image(self.client, "registry", base, progress.log)
            result.images_built += [registry_image] if built else []
            result.registry = self.ensure_registry(str(net[1]), registry_image)
            timings["registry_s"] = time.monotonic() - t3
            t4 = time.monotonic()
            result.queue = queue.up(self.ws, progress=progress).address
            timings["queue_s"] = time.monotonic() - t4
        except BaseException:
            for action in reversed(undo):
                try:
                    action()
                except Exception:  # best effort: the original error is what matters
                    pass
            raise
        t2 = time.monotonic()
        result.ping = run_playbook(self.ws, "ping.yml", "lab")
        timings["ping_s"] = time.monotonic() - t2
        timings["total_s"] = time.monotonic() - t0
        result.timings = {k: round(v, 2) for k, v in timings.items()}
        result.nodes = self.nodes()
        for n in result.nodes:  # dockerd answered in wait_ready; SSH answered the ping
            hr = result.ping.hosts.get(n.name)
            n.ssh_ok = hr is not None and hr.state in ("ok", "changed")
            n.docker_ok = True if PROFILES[n.profile].engine else None  # a light node: none
            n.message = hr.message if hr else None
        return result

    def ensure_registry(self, gateway: str, image: str) -> str:
        """The workspace registry, reachable by the nodes at the lab gateway, with the probe;
        returns the read-only endpoint's address (the nodes pull there)."""
        try:
            settings = registry.load(self.ws)
        except UsageError:
            settings = registry.init(self.ws, [gateway], image=image)
        registry_server.up(self.ws, image, client=self.client)
        if registry_server.PROBE_REPO not in registry.api(self.ws).catalog():
            registry_server.push_probe(self.ws, client=self.client)
        return settings.ro_address

    def _devices(self) -> list[dict]:
        """The devices this lab enrolled (labelled lab=<name>)."""
        return [d for d in devices.list_devices(self.ws) if d["labels"].get("lab") == self.name]

    def register(self, progress: Progress = SILENT) -> devices.DevicesResult | None:
        """Make the lab's devices match its nodes, through the device code (facts included).

        Devices of nodes that are gone, or were recreated with another address or
        profile, are removed; nodes without a device are enrolled.
        """
        nodes = {n.name: n for n in self.nodes()}
        for d in self._devices():
            n = nodes.get(d["name"])
            if n is None or d["host"] != n.ip or d["labels"].get("profile") != n.profile:
                why = "gone" if n is None else "recreated"
                devices.remove(self.ws, d["name"], reason=f"lab {self.name}: its node was {why}")
        known = {d["name"] for d in devices.list_devices(self.ws)}
        new = [
            devices.Device(
                name=n.name,
                host=n.ip,
                groups=["lab", "profile_" + n.profile.replace("-", "_")],
                labels={"lab": self.name, "profile": n.profile, **PROFILES[n.profile].labels},
            )
            for n in nodes.values()
            if n.name not in known
        ]
        return devices.add(self.ws, new, scan_keys=False, progress=progress) if new else None

    # ------------------------------------------------------- status/stop/start/down

    def status(self, progress: Progress = SILENT) -> list[LabNode]:
        """Docker state of each node plus an Ansible check of SSH and its Docker engine."""
        nodes = self.nodes()
        if not nodes:
            return nodes
        run = run_playbook(self.ws, "lab_status.yml", "lab", progress=progress)
        for n in nodes:
            hr = run.hosts.get(n.name)
            if hr is None:
                continue
            n.ssh_ok = hr.state != "unreachable"
            n.docker_ok = hr.state in ("ok", "changed") if PROFILES[n.profile].engine else None
            n.message = hr.message
            out = hr.outputs.get("docker version", {})
            n.docker_version = (out.get("stdout") or "").strip() or None
        return nodes

    def stop(self, node: str) -> LabNode:
        stopped = self.containers.stop(node)
        close_connections(self.ws, stopped.ip)  # the others' keep running
        forget_neighbour(stopped.ip)
        return stopped

    def start(self, node: str) -> LabNode:
        return self.containers.start(node)

    def down(self, *, purge: bool = False) -> dict[str, list[str]]:
        c = self.containers
        removed: dict[str, list[str]] = {"containers": [], "networks": [], "images": []}
        ips = set()
        for container in c.containers():
            ips.add(container.labels.get("evc.lab.ip", ""))
            removed["containers"].append(container.name)
            c.remove(container)
        # Bound to the gateway, so it goes with the network; --purge takes its data too.
        removed["registry"] = registry_server.down(self.ws, purge=purge, client=self.client)
        if worker.stop(self.ws, self.client):  # the lab worker of streamed runs
            removed["containers"].append(worker.container_name(self.ws))
        removed["queue"] = ["redis-server"] if queue.down(self.ws).stopped else []
        network = c.network()
        if network is not None:
            network.remove()
            removed["networks"].append(c.network_name)
        pin_host_keys(self.ws, {}, drop=ips)
        close_connections(self.ws)
        for d in self._devices():
            devices.remove(self.ws, d["name"], reason=f"lab {self.name} is down: its node is gone")
        if purge:
            import docker.errors

            removed["kept_in_use"] = []
            for repo in (
                "node",
                "node-arm64",
                "node-light",
                "registry",
                "worker",
                "base",
            ):  # the base last: the others sit on it
                name = f"{engine.IMAGE_REPO}/{repo}"
                for image_id, tags in engine.list_images(self.client, name):
                    try:
                        self.client.images.remove(image_id, force=True)
                        removed["images"] += tags
                    except docker.errors.APIError:  # another lab's nodes still use it
                        removed["kept_in_use"] += tags
        return removed
