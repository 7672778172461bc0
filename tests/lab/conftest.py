"""A 3-node lab, brought up once per session through the real CLI, torn down at the end.

The lab has its own name and subnet so it never touches a demo lab on the same engine.
"""

import json
import os
import threading

import pytest

from evc import engine
from evc.config import Workspace
from evc.engine import docker_client, ensure_arm64_node_image
from evc.lab.network import free_subnet
from tests.conftest import evc, write_settings

# Overridable so that two checkouts can run their lab tests side by side; without
# EVC_TEST_SUBNET the first free /24 from 172.30.0.0 on (a leftover network may hold it).
LAB_NAME = os.environ.get("EVC_TEST_LAB", "evctest")


def pytest_collection_modifyitems(items):
    """The mixed-fleet module runs last: its arm64 images (minutes under emulation on a
    fresh machine) build in the background from the lab's start (:func:`lab_session`)
    while the other tests run."""
    for item in items:
        if "/tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
    mixed = [i for i in items if i.fspath.basename == "test_mixed_fleet_lab.py"]
    if mixed:
        items[:] = [i for i in items if i not in mixed] + mixed


def _arm64_images() -> None:
    """The arm64 node image and model base (each cached by content hash once built)."""
    client = docker_client()
    ensure_arm64_node_image(client)
    base, _ = engine.ensure_base_image(client, arch="arm64")
    engine.ensure_image(client, "model-base", base, arch="arm64")


@pytest.fixture(scope="session")
def lab_session(tmp_path_factory, request):
    """(workspace, parsed `evc lab up --json` output). Starts the arm64 images' build
    in the background when the mixed-fleet module is to run (it joins the thread)."""
    if any(i.fspath.basename == "test_mixed_fleet_lab.py" for i in request.session.items):
        request.config.evc_arm64_images = threading.Thread(target=_arm64_images, daemon=True)
        request.config.evc_arm64_images.start()
    root = tmp_path_factory.mktemp("labws")
    subnet = os.environ.get("EVC_TEST_SUBNET") or free_subnet(
        docker_client(), f"evc-{LAB_NAME}", "172.30.0.0/24"
    )
    write_settings(root, f"name: labtest\nlab: {{name: {LAB_NAME}, subnet: {subnet}}}\n")
    env = {"EVC_HOME": str(root)}
    came_up = False
    try:  # a failed (or timed out) `lab up` leaves neither nodes nor registry behind
        up = evc("lab", "up", "--nodes", "3", "--json", env=env, timeout=900)
        if up.returncode != 0:
            pytest.fail(f"evc lab up failed ({up.returncode}):\n{up.stderr}\n{up.stdout}")
        came_up = True
        yield Workspace.load(root), json.loads(up.stdout)
    finally:  # after a failed up, whatever is there goes without masking why
        check = 0 if came_up else None
        evc("lab", "down", env=env, check=check)
        evc("registry", "down", "--purge", env=env, check=check)  # its data and local tags


@pytest.fixture
def lab_ws(lab_session):
    return lab_session[0]


@pytest.fixture
def lab_env(lab_ws, monkeypatch):
    monkeypatch.setenv("EVC_HOME", str(lab_ws.root))
    return {"EVC_HOME": str(lab_ws.root)}


def evc_json(*args, env, check=0):
    """Run ``evc ARGS --json`` and parse its output."""
    return json.loads(evc(*args, "--json", env=env, check=check, timeout=900).stdout)


@pytest.fixture(scope="module")
def trusted(lab_session):
    """Every node trusts the registry for this module (yields the workspace); revoked
    afterwards, as the other lab tests expect."""
    env = {"EVC_HOME": str(lab_session[0].root)}
    evc("cert", "push", "all", env=env, check=0)
    yield lab_session[0]
    evc("cert", "revoke", "all", env=env, check=0)


DEPLOYED = "ifaces"  # the model of the `deployed` fixture


@pytest.fixture(scope="session")
def deployed(lab_session):
    """DEPLOYED:1 (face-haar) running on node1 and node2, node3 without it, for the
    modules that run jobs on it (built, pushed and deployed once a session). The nodes'
    trust is revoked again afterwards, as the other lab tests expect; a running container
    needs none."""
    env = {"EVC_HOME": str(lab_session[0].root)}
    evc("cert", "push", "all", env=env, check=0)
    evc_json("model", "build", DEPLOYED, "--runtime", "face-haar", "--version", "1", env=env)
    evc_json("model", "push", f"{DEPLOYED}:1", env=env)
    evc_json("model", "deploy", f"{DEPLOYED}:1", "node1,node2", env=env)
    evc("cert", "revoke", "all", env=env, check=0)
    yield
    evc("model", "undeploy", DEPLOYED, "all", env=env)
    evc("model", "delete", f"{DEPLOYED}:1", "--force", env=env)
