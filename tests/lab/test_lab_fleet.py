"""The lab fleet, for real: Ansible over SSH, containers on each node's own engine."""

import json
from pathlib import Path

import pytest

from evc.ansible import run_playbook
from evc.connections import close_connections
from evc.errors import UsageError
from evc.lab.fleet import Lab
from evc.lab.nodes import PROFILES
from tests.conftest import evc

PROBE = str(Path(__file__).parent / "playbooks" / "probe.yml")
NODES = ["node1", "node2", "node3"]


def test_up_reports_every_node_and_pins_distinct_host_keys(lab_session):
    lab_ws, result = lab_session
    assert [n["name"] for n in result["nodes"]] == NODES
    assert {n["profile"] for n in result["nodes"]} == {"rpi", "nuc", "orin"}
    assert result["ping"]["status"] == "success"
    keys = [ln.split()[2] for ln in lab_ws.known_hosts.read_text().splitlines()]
    assert len(keys) == 3 and len(set(keys)) == 3
    key = lab_ws.private_dir / "keys" / "id_ed25519"
    assert key.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in lab_ws.inventory.read_text()


def test_ping_every_node_through_ansible_runner(lab_ws):
    run = run_playbook(lab_ws, "ping.yml", "lab")
    assert run.ok and sorted(run.hosts) == NODES
    answers = {h: (r.state, r.outputs["ping"]["stdout"].strip()) for h, r in run.hosts.items()}
    assert answers == {h: ("ok", "pong") for h in NODES}
    assert Path(run.artifacts_dir, "job_events").is_dir()


def test_container_runs_on_each_nodes_own_engine_within_node_limits(lab_ws):
    run = run_playbook(lab_ws, PROBE, "lab")
    assert run.ok, {h: r.message for h, r in run.hosts.items()}
    lab = Lab(lab_ws)
    for node in lab.nodes():
        outputs = run.hosts[node.name].outputs
        log = outputs["run probe container"]["container"]["Output"]
        assert f"hello-from-{node.name}" in log
        node_id = lab.containers.get(node.name).id
        # The inner container's cgroup sits under the node's: profile limits bind it.
        assert f"/docker/{node_id}/evc/" in log
        cg, quota, period = outputs["node cpu quota"]["stdout"].split()
        assert node_id in cg
        assert int(quota) / int(period) == PROFILES[node.profile].cpus
    # The containers ran on the nodes' engines, not the controller's.
    assert not lab.client.containers.list(all=True, filters={"name": "evc-probe"})


def test_rerunning_up_creates_and_builds_nothing(lab_ws, lab_env):
    before = lab_ws.known_hosts.read_text()
    proc = evc("lab", "up", "--nodes", "3", "--json", env=lab_env, check=0)
    result = json.loads(proc.stdout)
    assert result["created"] == [] and result["images_built"] == []
    assert lab_ws.known_hosts.read_text() == before


def test_changed_host_key_is_refused(lab_ws):
    original = lab_ws.known_hosts.read_text()
    other = [ln.split(" ", 1)[1] for ln in original.splitlines()]
    forged = original.splitlines()
    ip = forged[0].split()[0]
    forged[0] = f"{ip} {other[1]}"  # node A's address with node B's key
    lab_ws.known_hosts.write_text("\n".join(forged) + "\n")
    close_connections(lab_ws)  # a live ControlPersist master would skip the key check
    try:
        run = run_playbook(lab_ws, "ping.yml", "lab")
    finally:
        lab_ws.known_hosts.write_text(original)
    bad = [r for r in run.hosts.values() if r.state == "unreachable"]
    assert len(bad) == 1 and "Host key verification failed" in bad[0].message
    assert run.status == "partial"


def test_stopped_node_is_unreachable_then_recovers(lab_ws, lab_env):
    evc("lab", "stop", "node2", env=lab_env, check=0)
    try:
        run = run_playbook(lab_ws, "ping.yml", "lab")
        assert run.hosts["node2"].state == "unreachable"
        assert run.hosts["node1"].state == run.hosts["node3"].state == "ok"
        proc = evc("lab", "status", "--json", env=lab_env, check=1)
        status = {n["name"]: n for n in json.loads(proc.stdout)}
        assert status["node2"]["state"] == "exited" and status["node2"]["ssh_ok"] is False
        assert status["node1"]["ssh_ok"] and status["node1"]["docker_ok"]
    finally:
        evc("lab", "start", "node2", env=lab_env, check=0)
    assert run_playbook(lab_ws, "ping.yml", "lab").ok
    proc = evc("lab", "status", "--json", env=lab_env, check=0)
    status = {n["name"]: n for n in json.loads(proc.stdout)}
    assert status["node2"]["docker_ok"] and status["node2"]["docker_version"]


def test_unknown_node_and_unknown_target(lab_ws, lab_env):
    proc = evc("lab", "stop", "node9", env=lab_env, check=2)
    assert "No lab node named 'node9'" in proc.stderr and "node1" in proc.stderr
    with pytest.raises(UsageError, match=r"matches no host.*Known groups: .*lab"):
        run_playbook(lab_ws, "ping.yml", "nosuchgroup")


def test_no_environment_secret_lands_in_run_artifacts(lab_ws, monkeypatch):
    monkeypatch.setenv("EVC_TEST_CLOUD_TOKEN", "tok-9f8e7d6c5b4a")
    run = run_playbook(lab_ws, "ping.yml", "lab")
    assert run.ok
    leaked = [
        p
        for p in Path(run.artifacts_dir).rglob("*")
        if p.is_file() and "tok-9f8e7d6c5b4a" in p.read_text(errors="replace")
    ]
    assert leaked == []
    command = json.loads(Path(run.artifacts_dir, "command").read_text())
    assert command["env"]["ANSIBLE_PIPELINING"] == "True"
