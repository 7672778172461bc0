"""The lab's Docker network: a subnet that overlaps nothing on this machine."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from evc.errors import UsageError


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


def forget_neighbour(ip: str) -> None:
    """Drop this host's ARP entry for ``ip``, a node that just stopped: the next connection
    to it then fails with "No route to host" after one ARP round (about 3 s), as to a
    device that has been off for a while, instead of waiting out the SSH connect timeout
    (10 s) on the dead node's cached address (each such run took 7 s longer). Needs
    CAP_NET_ADMIN; without it, or without iproute2, nothing changes."""
    ipaddress.IPv4Address(ip)  # ours (a container label), checked all the same
    try:
        subprocess.run(["ip", "neigh", "flush", "to", ip], capture_output=True, check=False)
    except OSError:
        pass
