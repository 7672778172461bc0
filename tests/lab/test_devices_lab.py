"""Devices on the real lab: true facts, liveness, host-key pinning, run records."""

import ipaddress
import json

import yaml

from evc import db as evcdb
from evc.connections import close_connections
from evc.lab.fleet import Lab
from evc.lab.nodes import PROFILES, Nodes
from tests.conftest import evc


def _devices(env):
    return {
        d["name"]: d for d in json.loads(evc("device", "list", "--json", env=env, check=0).stdout)
    }


def test_lab_nodes_are_devices_with_true_facts(lab_ws, lab_env):
    lab = Lab(lab_ws)
    devs = _devices(lab_env)
    assert sorted(devs) == ["node1", "node2", "node3"]
    for node in lab.nodes():
        d = devs[node.name]
        profile = PROFILES[node.profile]
        assert d["arch"] == "amd64" and d["os"].startswith("Debian GNU/Linux 12")
        assert d["cpu_count"] == profile.cpus  # the cgroup limit, not the host's cores
        assert d["mem_bytes"] == profile.mem_gib * 2**30
        assert d["docker_version"].startswith("20.10")
        assert d["accelerator"] == "none" and d["disk_bytes"] > 2**30
        assert d["status"] == "online" and d["last_seen"]
        assert "lab" in d["groups"] and d["labels"]["profile"] == node.profile
    text = evc("inventory", "show", env=lab_env, check=0).stdout
    groups = yaml.safe_load(text.split("\n", 1)[1])["all"]["children"]
    assert set(groups["arch_amd64"]["hosts"]) == set(groups["workers"]["hosts"]) == set(devs)


def test_ping_marks_a_stopped_node_unreachable_then_online(lab_ws, lab_env):
    evc("lab", "stop", "node3", env=lab_env, check=0)
    try:
        proc = evc("device", "ping", "lab", "--json", env=lab_env, check=1)
        states = {r["name"]: r["state"] for r in json.loads(proc.stdout)}
        assert states == {"node1": "ok", "node2": "ok", "node3": "unreachable"}
        # `lab stop` drops the host's ARP entry for the node: one ARP round, not the
        # 10 s connect timeout on a cached address (7 s less for each such run)
        (why,) = [r["message"] for r in json.loads(proc.stdout) if r["name"] == "node3"]
        assert "No route to host" in why
        devs = _devices(lab_env)
        assert devs["node3"]["status"] == "unreachable" and devs["node1"]["status"] == "online"
    finally:
        evc("lab", "start", "node3", env=lab_env, check=0)
    evc("device", "ping", "node3", env=lab_env, check=0)
    assert _devices(lab_env)["node3"]["status"] == "online"


def test_every_run_and_action_is_recorded(lab_ws, lab_env):
    evc("device", "ping", "profile_rpi", env=lab_env, check=0)
    db = evcdb.workspace_db(lab_ws)
    run = next(db.query("select * from ansible_runs order by started desc limit 1"))
    assert run["playbook"] == "ping.yml" and run["target"] == "profile_rpi"
    hosts = list(db.query("select host, state from host_results where run_id = ?", [run["id"]]))
    assert hosts == [{"host": "node1", "state": "ok"}]
    audit = next(db.query("select * from audit_log order by id desc limit 1"))
    assert audit["command"] == "device ping" and audit["exit_code"] == 0


def test_replaced_host_key_is_refused(lab_ws, lab_env):
    node = Nodes(lab_ws).get("node1")
    ip = node.labels["evc.lab.ip"]
    swap = "mkdir -p /root/keys.bak && cp /etc/ssh/ssh_host_* /root/keys.bak/ && "
    swap += "rm /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && pkill -HUP -x sshd"
    assert node.exec_run(["sh", "-c", swap]).exit_code == 0
    close_connections(lab_ws)
    try:
        proc = evc("device", "ping", "node1", "--json", env=lab_env, check=1)
        (result,) = json.loads(proc.stdout)
        assert result["state"] == "unreachable"
        assert "Host key verification failed" in result["message"]
        proc = evc("device", "add", "impostor", "--host", ip, env=lab_env, check=2)
        assert "has CHANGED" in proc.stderr
        assert "impostor" not in _devices(lab_env)
        assert "impostor" not in lab_ws.inventory.read_text()
    finally:
        node.exec_run(["sh", "-c", "cp /root/keys.bak/* /etc/ssh/ && pkill -HUP -x sshd"])
        close_connections(lab_ws)
    evc("device", "ping", "node1", env=lab_env, check=0)


def test_unreachable_host_at_add_is_recorded_not_a_crash(lab_ws, lab_env):
    # An address on the lab network where nothing listens.
    ghost = str(ipaddress.ip_network(lab_ws.lab_subnet)[200])
    proc = evc("device", "add", "ghost", "--host", ghost, "--json", env=lab_env, check=1)
    (result,) = json.loads(proc.stdout)
    assert result["state"] == "unreachable" and "Traceback" not in proc.stderr
    try:
        assert _devices(lab_env)["ghost"]["status"] == "unreachable"
    finally:
        evc("device", "remove", "ghost", env=lab_env, check=0)
    assert "ghost" not in lab_ws.inventory.read_text()
