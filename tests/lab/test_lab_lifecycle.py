"""Bad input that reaches Docker, and a lab that goes down without leftovers."""

import json
import time

from evc import db as evcdb
from evc import registry
from evc.config import Workspace
from evc.engine import docker_client
from evc.lab.network import free_subnet
from evc.lab.nodes import LABEL
from evc.model import deployments
from tests.conftest import evc, write_settings
from tests.lab.conftest import LAB_NAME


def _leftovers(client, name):
    f = {"label": f"{LABEL}={name}"}
    return (
        client.containers.list(all=True, filters=f),
        client.networks.list(filters=f),
        client.volumes.list(filters=f),
    )


def test_clashing_subnet_is_refused_and_creates_nothing(lab_ws, tmp_path):
    write_settings(tmp_path, "lab: {name: evcclash}\n")
    overlapping = lab_ws.lab_subnet.replace("/24", "/25")
    proc = evc(
        "lab",
        "up",
        "--nodes",
        "1",
        "--subnet",
        overlapping,
        env={"EVC_HOME": str(tmp_path)},
        check=2,
    )
    assert f"overlaps Docker network 'evc-{LAB_NAME}'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _leftovers(docker_client(), "evcclash") == ([], [], [])


def test_down_leaves_no_container_network_or_volume(lab_ws, tmp_path):
    subnet = free_subnet(docker_client(), "evc-evcdown", "172.31.240.0/24")
    write_settings(tmp_path, f"lab: {{name: evcdown, subnet: {subnet}}}\n")
    env = {"EVC_HOME": str(tmp_path)}
    try:
        _up_recreate_and_down(env, tmp_path, gateway=subnet.replace(".0/24", ".1"))
    finally:  # a failed assertion must not leave a lab holding the subnet and port
        evc("lab", "down", env=env)
        evc("registry", "down", "--purge", env=env)


def _up_recreate_and_down(env, tmp_path, gateway):
    up = json.loads(
        evc("lab", "up", "--nodes", "1", "--profile", "rpi", "--json", env=env, check=0).stdout
    )
    assert up["ping"]["status"] == "success" and up["created"]
    assert up["queue"] == f"{gateway}:6380"  # started at the gateway, for pull mode
    queue = json.loads(evc("queue", "status", "--json", env=env, check=0).stdout)
    assert queue["state"] == "running" and queue["address"] == up["queue"]
    client = docker_client()
    assert all(_leftovers(client, "evcdown"))
    ws = Workspace.load(tmp_path)
    _plant_deployment(ws)
    # Recreated with another profile: the device follows the node, facts included, and
    # the old node's deployments end with it (issue 17).
    evc("lab", "up", "--nodes", "1", "--profile", "nuc", env=env, check=0)
    assert _ended(ws) == "lab evcdown: its node was recreated"
    _plant_deployment(ws)
    (dev,) = json.loads(evc("device", "list", "--json", env=env, check=0).stdout)
    assert dev["labels"]["profile"] == "nuc" and dev["cpu_count"] == 1.0
    assert "profile_nuc" in dev["groups"] and "profile_rpi" not in dev["groups"]
    down = json.loads(evc("lab", "down", "--json", env=env, check=0).stdout)
    assert down["containers"] == ["evc-evcdown-node1"] and down["queue"] == ["redis-server"]
    queue = json.loads(evc("queue", "status", "--json", env=env, check=1).stdout)
    assert queue["state"] == "stopped"
    assert _ended(ws) == "lab evcdown is down: its node is gone"
    assert _leftovers(client, "evcdown") == ([], [], [])
    rw = down["registry"][0]  # and the read-only endpoint's container beside it
    assert rw.startswith("evc-registry-default-") and down["registry"] == [rw, f"{rw}-ro"]
    assert not client.containers.list(all=True, filters={"name": rw})
    purged = json.loads(evc("registry", "down", "--purge", "--json", env=env, check=0).stdout)
    trust = registry.CERTS_D / f"{gateway}:5000"  # the controller's trust in the lab's CA
    assert purged == [f"{rw}-data", f"{gateway}:5000/evc/probe:1", str(trust)]
    assert not trust.exists()
    assert not client.images.list(name=f"{gateway}:5000/evc/probe")
    assert (tmp_path / ".evc" / "known_hosts").read_text() == ""


def _plant_deployment(ws) -> None:
    """A model recorded as running on node1 (what a deploy would leave; no build needed)."""
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        db["deployments"].insert({"model": "planted", "version": "1", "node": "node1",
                                  "image": "registry/evc/planted@sha256:" + "0" * 64,
                                  "action": "deploy", "state": "running",
                                  "started": time.time()})  # fmt: skip


def _ended(ws) -> str:
    """Why node1's deployment ended; fails if anything still counts as running."""
    assert deployments.current(ws) == []
    return deployments.history(ws, 1, 0, node="node1")["items"][0]["error"]
