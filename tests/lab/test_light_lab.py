"""A light lab (sshd and python, no Docker engine): ping, facts and telemetry work,
a command that needs Docker says so per host. A lab of its own, three nodes."""

import json
import os

import pytest

from evc.config import Workspace
from evc.engine import docker_client
from evc.lab.network import free_subnet
from tests.conftest import evc, write_settings

LAB = os.environ.get("EVC_TEST_LAB", "evctest") + "-l"


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    root = tmp_path_factory.mktemp("lightws")
    subnet = free_subnet(docker_client(), f"evc-{LAB}", "172.30.0.0/24")
    write_settings(root, f"name: lighttest\nlab: {{name: {LAB}, subnet: {subnet}}}\n")
    env = {"EVC_HOME": str(root)}
    try:
        up = evc("lab", "up", "--nodes", "3", "--profile", "light", "--json", env=env,
                 timeout=900)  # fmt: skip
        assert up.returncode == 0, up.stderr + up.stdout
        yield Workspace.load(root), env, json.loads(up.stdout)
    finally:
        evc("lab", "down", env=env)
        evc("registry", "down", "--purge", env=env)


def test_light_nodes_are_unprivileged_devices_without_an_engine(light):
    ws, env, up = light
    assert [(n["name"], n["profile"], n["ssh_ok"], n["docker_ok"]) for n in up["nodes"]] == [
        (f"node{i}", "light", True, None) for i in (1, 2, 3)
    ]
    client = docker_client()
    for n in up["nodes"]:
        attrs = client.containers.get(n["container"]).attrs
        assert not attrs["HostConfig"]["CapAdd"] and not attrs["Mounts"]  # no engine, no volume
    devices = {d["name"]: d for d in json.loads(evc("device", "list", "--json", env=env).stdout)}
    assert sorted(devices) == ["node1", "node2", "node3"]
    for d in devices.values():  # enrolled like any lab node, facts included
        assert d["groups"] == ["lab", "profile_light"] and d["labels"]["docker"] == "none"
        assert d["docker_version"] is None and d["arch"] == "amd64"
        assert d["mem_bytes"] == 2**28 and d["cpu_count"] == 0.25  # its limits
        assert d["status"] == "online"


def test_ping_facts_and_telemetry_work(light):
    _, env, _ = light
    for args in (("device", "ping"), ("device", "facts")):
        evc(*args, "profile_light", env=env, check=0)
    collected = json.loads(evc("logs", "collect", "lab", "--json", env=env, check=0).stdout)
    assert collected["ingested"] == 3


def test_a_docker_command_says_per_host_that_a_light_node_has_no_engine(light):
    _, env, _ = light
    push = evc("cert", "push", "node1,node3", "--json", env=env, check=1)
    hosts = json.loads(push.stdout)["hosts"]
    assert sorted(hosts) == ["node1", "node3"]  # only the targeted hosts ran
    for name, r in hosts.items():
        assert r["state"] == "failed"
        assert r["message"] == (
            f"{name} has no Docker engine (label docker=none, e.g. a light lab node): "
            "cert push needs one"
        )
    assert "Traceback" not in push.stderr
