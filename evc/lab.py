"""A real fleet on one machine: Docker-in-Docker nodes with sshd and their own engine.

Images are built without Docker Hub: a Debian base from debootstrap, then a node
image FROM it. Each image carries a content hash label, so an unchanged image is
never rebuilt. Nodes get CPU/memory limits and labels from a hardware profile,
their own SSH host key (pinned from inside the container, not by trusting the
network), and the lab's SSH key authorised.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evc.config import Workspace
from evc.errors import EVCError, UsageError
from evc.keys import controller_key, pin_host_keys

MAX_NODES = 64
SUITE = "bookworm"
IMAGE_REPO = "evc-lab"
LABEL = "evc.lab"
HASH_LABEL = "evc.lab.hash"
IMAGE_DIR = Path(__file__).parent / "lab_image"  # one build context per image: node, registry
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


PROFILES = {
    p.name: p
    for p in (
        Profile("rpi", 0.5, 1, {"hw": "raspberry-pi-4", "class": "small", "accelerator": "none"}),
        Profile("nuc", 1.0, 2, {"hw": "intel-nuc", "class": "medium", "accelerator": "none"}),
        Profile(
            "orin", 1.5, 4, {"hw": "jetson-orin-nano", "class": "large", "accelerator": "none"}
        ),
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


@dataclass
class LabUpResult:
    lab: str
    network: str
    subnet: str
    gateway: str
    nodes: list[LabNode]
    registry: str | None = None  # address the nodes pull from
    created: list[str] = field(default_factory=list)
    images_built: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    ping: Any = None  # evc.ansible.RunResult

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ping"] = self.ping.to_dict() if self.ping else None
        return out


# --------------------------------------------------------------------- docker


def docker_client():
    """A Docker SDK client, or a clear error when no engine answers."""
    import docker

    try:
        client = docker.from_env(version="auto", timeout=120)
        client.ping()
    except Exception as exc:  # the SDK raises several types for "no engine"
        raise EVCError(
            "No Docker engine answers (DOCKER_HOST="
            f"{os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}): {exc}. "
            "Start one as root (`make demo` and `make test` start dockerd if none runs)."
        ) from None
    return client


def _image_with_hash(client, tag: str, digest: str):
    import docker.errors

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    return image if (image.labels or {}).get(HASH_LABEL) == digest else None


# --------------------------------------------------------------------- images


def apt_mirror(root: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's own apt sources use for the main suite."""
    files = [root / "sources.list"] + sorted((root / "sources.list.d").glob("*"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.M))
                if SUITE in fields.get("Suites", "").split() and "URIs" in fields:
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                    return parts[1]
    raise EVCError(
        f"No Debian {SUITE} mirror found in {root}/sources.list or sources.list.d: the lab "
        "builds its base image with debootstrap from the machine's own apt mirror."
    )


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def ensure_base_image(client, log=print) -> tuple[str, bool]:
    """Debian minbase from debootstrap, imported; returns (tag, built_now)."""
    mirror = apt_mirror()
    digest = _digest("base-v1", SUITE, "minbase", mirror)
    tag = f"{IMAGE_REPO}/base:{digest}"
    if _image_with_hash(client, tag, digest):
        return tag, False
    if not shutil.which("debootstrap"):
        raise EVCError(
            "debootstrap is not installed (apt-get install debootstrap; `make` does it)."
        )
    log(f"building base image {tag} with debootstrap from {mirror} (about 35 s)")
    with tempfile.TemporaryDirectory(prefix="evc-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise EVCError(f"debootstrap failed (exit {proc.returncode}):\n{tail}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            client.api.import_image(
                src=tar.stdout,
                repository=f"{IMAGE_REPO}/base",
                tag=digest,
                changes=[f"LABEL {HASH_LABEL}={digest}"],
            )
        finally:
            tar.stdout.close()
            tar.wait()
    return tag, True


def ensure_image(client, name: str, base_tag: str, log=print) -> tuple[str, bool]:
    """Image ``name`` built FROM the base from evc/lab_image/<name>; (tag, built_now)."""
    import docker.errors

    context = IMAGE_DIR / name
    files = sorted(p for p in context.iterdir() if p.is_file())
    digest = _digest(f"{name}-v1", base_tag, *(p.name + p.read_text() for p in files))
    tag = f"{IMAGE_REPO}/{name}:{digest}"
    if _image_with_hash(client, tag, digest):
        return tag, False
    log(f"building lab image {tag} (apt-get inside, about 40 s)")
    try:
        client.images.build(
            path=str(context),
            tag=tag,
            buildargs={"BASE": base_tag},
            labels={HASH_LABEL: digest},
            rm=True,
            forcerm=True,
        )
    except docker.errors.BuildError as exc:
        lines = [c.get("stream", c.get("error", "")) for c in exc.build_log]
        tail = "".join(lines).strip().splitlines()[-8:]
        raise EVCError(f"lab {name} image build failed:\n" + "\n".join(tail)) from None
    return tag, True


# ---------------------------------------------------------------------- network


def _host_routes() -> list[tuple[str, ipaddress.IPv4Network]]:
    routes = []
    try:
        rows = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return routes
    for row in rows:
        f = row.split()
        dest = ipaddress.IPv4Address(int(f[1], 16).to_bytes(4, "little"))
        mask = ipaddress.IPv4Address(int(f[7], 16).to_bytes(4, "little"))
        if int(mask) == 0:
            continue  # default route
        routes.append((f[0], ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)))
    return routes


def check_subnet(client, subnet: str, network_name: str, nodes: int) -> ipaddress.IPv4Network:
    """Parse ``subnet`` and refuse it if too small or overlapping another network."""
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as exc:
        raise UsageError(f"--subnet {subnet!r} is not a network in CIDR form ({exc}).") from None
    if net.version != 4:
        raise UsageError(f"--subnet {subnet} is IPv6; the lab network needs an IPv4 subnet.")
    if net.num_addresses < nodes + 16:
        raise UsageError(
            f"--subnet {subnet} is too small for {nodes} nodes: use an IPv4 network with at "
            f"least {nodes + 16} addresses (e.g. a /24)."
        )
    networks = _docker_subnets(client)
    mine = [theirs for name, _, theirs in networks if name == network_name]
    if mine and mine[0] != net:
        raise UsageError(
            f"Lab network {network_name} exists with subnet {mine[0]}, not {net}: "
            "run `evc lab down` first to change the subnet."
        )
    conflict = _conflict(networks, net, network_name)
    if conflict:
        hint = free_subnet(client, network_name, start=str(net), networks=networks)
        raise UsageError(f"--subnet {net} {conflict}; choose another, e.g. --subnet {hint}.")
    return net


def _docker_subnets(client) -> list[tuple[str, str, ipaddress.IPv4Network]]:
    """(network name, bridge interface, IPv4 subnet) of every Docker network."""
    found = []
    for other in client.networks.list():
        for cfg in (other.attrs.get("IPAM") or {}).get("Config") or []:
            if "Subnet" in cfg and ":" not in cfg["Subnet"]:
                subnet = ipaddress.ip_network(cfg["Subnet"], strict=False)
                found.append((other.name, "br-" + other.id[:12], subnet))
    return found


def _conflict(networks, net: ipaddress.IPv4Network, network_name: str) -> str | None:
    """Why ``net`` cannot be the lab network ``network_name``, or None if it can."""
    own_bridge = None
    for name, bridge, theirs in networks:
        if name == network_name:
            own_bridge = bridge
        elif theirs.overlaps(net):
            return f"overlaps Docker network {name!r} ({theirs})"
    for iface, route in _host_routes():
        if iface != own_bridge and route.overlaps(net) and not iface.startswith("br-"):
            return f"overlaps the host route {route} on {iface}"
    return None


def free_subnet(client, network_name: str, start="172.28.0.0/24", networks=None) -> str:
    """The first /24 in 172.16.0.0/12, from ``start`` on, that lab ``network_name`` may use."""
    networks = _docker_subnets(client) if networks is None else networks
    begin = ipaddress.ip_network(start, strict=False).network_address
    nets = list(ipaddress.ip_network("172.16.0.0/12").subnets(new_prefix=24))
    offset = next((i for i, n in enumerate(nets) if begin in n), 0)
    for net in nets[offset:] + nets[:offset]:
        if _conflict(networks, net, network_name) is None:
            return str(net)
    raise UsageError("No free /24 left in 172.16.0.0/12 for the lab network; pass --subnet.")


# --------------------------------------------------------------------------- lab


class Lab:
    """The lab of one workspace: names derive from ``ws.lab_name``."""

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

    # ------------------------------------------------------------------ up

    def up(
        self,
        nodes: int = 3,
        profiles: list[str] | None = None,
        subnet: str | None = None,
        log=print,
    ) -> LabUpResult:
        """Bring the lab to exactly ``nodes`` running nodes; undo what it made on failure."""
        profiles = list(profiles or DEFAULT_PROFILES)
        validate_request(nodes, profiles)
        subnet = subnet or self.ws.lab_subnet
        net = check_subnet(self.client, subnet, self.network_name, nodes)
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        result = LabUpResult(self.name, self.network_name, str(net), str(net[1]), [])
        undo: list = []
        try:
            base, built = ensure_base_image(self.client, log)
            result.images_built += [base] if built else []
            image, built = ensure_image(self.client, "node", base, log)
            result.images_built += [image] if built else []
            timings["images_s"] = time.monotonic() - t0
            _, pubkey = controller_key(self.ws)
            network = self.network()
            if network is None:
                import docker.types

                ipam = docker.types.IPAMConfig(
                    pool_configs=[docker.types.IPAMPool(subnet=str(net), gateway=str(net[1]))]
                )
                network = self.client.networks.create(
                    self.network_name, driver="bridge", ipam=ipam, labels={LABEL: self.name}
                )
                undo.append(network.remove)
                result.created.append(f"network {self.network_name}")
            t1 = time.monotonic()
            wanted = {}
            for i in range(1, nodes + 1):
                profile = PROFILES[profiles[(i - 1) % len(profiles)]]
                wanted[f"node{i}"] = (i, profile, str(net[9 + i]))
            image_id = self.client.images.get(image).id
            for c in self.containers():
                spec = wanted.get(c.labels.get("evc.lab.node"))
                stale = (
                    spec is None
                    or c.labels.get("evc.lab.profile") != spec[1].name
                    or c.labels.get("evc.lab.ip") != spec[2]
                    or c.image.id != image_id
                )
                if stale:
                    self._remove(c)
            existing = {c.labels["evc.lab.node"]: c for c in self.containers()}
            for node, (index, profile, ip) in wanted.items():
                c = existing.get(node)
                if c is None:
                    c = self._create(node, index, profile, ip, image, pubkey)
                    undo.append(lambda c=c: self._remove(c))
                    result.created.append(f"node {node}")
                if c.status != "running":
                    c.start()
            ready = self._wait_ready(list(wanted))
            timings["nodes_s"] = time.monotonic() - t1
            pin_host_keys(self.ws, {ip: ready[n] for n, (_, _, ip) in wanted.items()})
            self.register()
            t3 = time.monotonic()
            registry_image, built = ensure_image(self.client, "registry", base, log)
            result.images_built += [registry_image] if built else []
            result.registry = self.ensure_registry(str(net[1]), registry_image)
            timings["registry_s"] = time.monotonic() - t3
        except BaseException:
            for action in reversed(undo):
                try:
                    action()
                except Exception:  # best effort: the original error is what matters
                    pass
            raise
        from evc.ansible import run_playbook

        t2 = time.monotonic()
        result.ping = run_playbook(self.ws, "ping.yml", "lab", progress=False)
        timings["ping_s"] = time.monotonic() - t2
        timings["total_s"] = time.monotonic() - t0
        result.timings = {k: round(v, 2) for k, v in timings.items()}
        result.nodes = self.nodes()
        for n in result.nodes:  # dockerd answered in _wait_ready; SSH answered the ping
            hr = result.ping.hosts.get(n.name)
            n.ssh_ok = hr is not None and hr.state in ("ok", "changed")
            n.docker_ok = True
            n.message = hr.message if hr else None
        return result

    def _create(self, node: str, index: int, profile: Profile, ip: str, image: str, pubkey: str):
        api = self.client.api
        labels = {
            LABEL: self.name,
            "evc.lab.node": node,
            "evc.lab.index": str(index),
            "evc.lab.profile": profile.name,
            "evc.lab.ip": ip,
            **{f"evc.label.{k}": v for k, v in profile.labels.items()},
        }
        volume = self.volume_name(node)
        self.client.volumes.create(volume, labels={LABEL: self.name})
        return self.client.containers.create(
            image,
            name=self.container_name(node),
            hostname=node,
            detach=True,
            labels=labels,
            environment={"EVC_AUTHORIZED_KEY": pubkey},
            nano_cpus=int(profile.cpus * 1e9),
            mem_limit=int(profile.mem_gib * 2**30),
            volumes={
                "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                volume: {"bind": "/var/lib/docker", "mode": "rw"},
            },
            network=self.network_name,
            networking_config={self.network_name: api.create_endpoint_config(ipv4_address=ip)},
            **NODE_RUN_OPTS,
        )

    def _remove(self, container) -> None:
        import docker.errors

        node = container.labels.get("evc.lab.node", "")
        container.remove(force=True)
        try:
            self.client.volumes.get(self.volume_name(node)).remove(force=True)
        except docker.errors.NotFound:
            pass

    def _wait_ready(self, names: list[str]) -> dict[str, str]:
        """Wait for sshd + dockerd on each node; return each node's SSH host key."""

        def ready(node: str) -> str:
            c = self.get(node)
            code, output = c.exec_run(["/usr/local/sbin/node-ready"])
            if code != 0:
                raise EVCError(f"lab node {node} did not come up: {output.decode().strip()}")
            code, key = c.exec_run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])
            if code != 0:
                raise EVCError(f"lab node {node} has no SSH host key: {key.decode().strip()}")
            return " ".join(key.decode().split()[:2])

        with ThreadPoolExecutor(max_workers=min(len(names), 16) or 1) as pool:
            return dict(zip(names, pool.map(ready, names), strict=True))

    def ensure_registry(self, gateway: str, image: str) -> str:
        """The workspace registry, reachable by the nodes at the lab gateway, with the probe."""
        from evc import registry

        try:
            settings = registry.load(self.ws)
        except UsageError:
            settings = registry.init(self.ws, [gateway], image=image)
        registry.up(self.ws, image, client=self.client)
        if registry.PROBE_REPO not in registry.RegistryClient.for_workspace(self.ws).catalog():
            registry.push_probe(self.ws, self.client)
        return settings.address

    def _devices(self) -> list[dict]:
        """The devices this lab enrolled (labelled lab=<name>)."""
        from evc import devices

        return [d for d in devices.list_devices(self.ws) if d["labels"].get("lab") == self.name]

    def register(self, progress: bool = False) -> list:
        """Make the lab's devices match its nodes, through the device code (facts included).

        Devices of nodes that are gone, or were recreated with another address or
        profile, are removed; nodes without a device are enrolled.
        """
        from evc import devices

        nodes = {n.name: n for n in self.nodes()}
        for d in self._devices():
            n = nodes.get(d["name"])
            if n is None or d["host"] != n.ip or d["labels"].get("profile") != n.profile:
                devices.remove(self.ws, d["name"])
        known = {d["name"] for d in devices.list_devices(self.ws)}
        new = [
            devices.Device(
                name=n.name,
                host=n.ip,
                groups=["lab", f"profile_{n.profile}"],
                labels={"lab": self.name, "profile": n.profile, **PROFILES[n.profile].labels},
            )
            for n in nodes.values()
            if n.name not in known
        ]
        return devices.add(self.ws, new, scan_keys=False, progress=progress) if new else []

    # ------------------------------------------------------- status/stop/start/down

    def status(self, progress: bool = True) -> list[LabNode]:
        """Docker state of each node plus an Ansible check of SSH and its Docker engine."""
        nodes = self.nodes()
        if not nodes:
            return nodes
        from evc.ansible import run_playbook

        run = run_playbook(self.ws, "lab_status.yml", "lab", progress=progress)
        for n in nodes:
            hr = run.hosts.get(n.name)
            if hr is None:
                continue
            n.ssh_ok = hr.state != "unreachable"
            n.docker_ok = hr.state in ("ok", "changed")
            n.message = hr.message
            out = hr.outputs.get("docker version", {})
            n.docker_version = (out.get("stdout") or "").strip() or None
        return nodes

    def stop(self, node: str) -> LabNode:
        from evc.ansible import close_connections

        c = self.get(node)
        c.stop(timeout=2)
        close_connections(self.ws, c.labels["evc.lab.ip"])  # the others' keep running
        c.reload()
        return self._node(c)

    def start(self, node: str) -> LabNode:
        c = self.get(node)
        c.start()
        self._wait_ready([node])
        c.reload()
        return self._node(c)

    def down(self, purge: bool = False) -> dict[str, list[str]]:
        removed: dict[str, list[str]] = {"containers": [], "networks": [], "images": []}
        ips = set()
        for c in self.containers():
            ips.add(c.labels.get("evc.lab.ip", ""))
            removed["containers"].append(c.name)
            self._remove(c)
        from evc import registry

        # Bound to the gateway, so it goes with the network; --purge takes its data too.
        removed["registry"] = registry.down(self.ws, purge=purge, client=self.client)
        network = self.network()
        if network is not None:
            network.remove()
            removed["networks"].append(self.network_name)
        pin_host_keys(self.ws, {}, drop=ips)
        from evc.ansible import close_connections

        close_connections(self.ws)
        from evc import devices

        for d in self._devices():
            devices.remove(self.ws, d["name"])
        if purge:
            import docker.errors

            removed["kept_in_use"] = []
            for repo in ("node", "registry", "base"):  # the base last: the others sit on it
                for image in self.client.images.list(name=f"{IMAGE_REPO}/{repo}"):
                    try:
                        self.client.images.remove(image.id, force=True)
                        removed["images"] += image.tags
                    except docker.errors.APIError:  # another lab's nodes still use it
                        removed["kept_in_use"] += image.tags
        return removed


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
            + "; ".join(f"{p.name}: {p.cpus} CPU, {p.mem_gib:g} GiB" for p in PROFILES.values())
            + ")."
        )
    cpus = os.cpu_count() or 1
    too_big = [p for p in profiles if PROFILES[p].cpus > cpus]
    if too_big:
        raise UsageError(
            f"Profile {too_big[0]!r} needs {PROFILES[too_big[0]].cpus} CPUs; "
            f"this machine has {cpus}."
        )
