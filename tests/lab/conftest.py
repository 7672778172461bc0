"""A 3-node lab, brought up once per session through the real CLI, torn down at the end.

The lab has its own name and subnet so it never touches a demo lab on the same engine.

Fixtures for lab modules (reuse them rather than bringing up a lab or building a model
of your own: a lab start, a model build and a deploy each cost tens of seconds here):

- ``lab_session`` (session): (workspace, `evc lab up --json` output) of the 3-node lab,
  node1 rpi, node2 nuc, node3 orin, all amd64, untrusting the registry.
- ``lab_ws`` / ``lab_env``: that workspace; ``lab_env`` also sets EVC_HOME for library
  calls in the test and is the ``env`` to pass to ``evc(...)``.
- ``trusted`` (module): every node trusts the registry (cert push) for the module,
  revoked after it.
- ``deployed`` (session): DEPLOYED:1 (face-haar) running on node1 and node2, not node3.
- ``evc_json(*args, env=...)``: an ``evc ... --json`` call, parsed.

Each test leaves the lab as it found it: every node running, untrusted outside
``trusted``, no device, model or deployment of its own left (a ``finally`` puts it
back). The mixed-fleet module (test_mixed_fleet_lab.py) runs last: it recreates node3
as an arm64 builder.

Labs side by side (`make test`): ``EVC_TEST_SHARD=K/N`` runs the modules of shard K
(``SHARDS``: a module not named there runs in shard 1), on a lab of its own named
EVC_TEST_LAB with K appended for K > 1, whose subnet is searched from its own start.
"""

import json
import os
import signal
import threading

import pytest

from evc.config import Workspace
from evc.engine import docker_client, ensure_arm64_node_image
from evc.lab.network import free_subnet
from evc.lab.nodes import Nodes, exec_read
from tests.conftest import evc, write_settings

# A pytest started as a background job of a shell (`make test`'s second shard, or a run
# under nohup) inherits SIGINT ignored, and so would every `evc` it starts: the tests
# that Ctrl-C a job need it delivered as from a terminal (a handled signal is reset to
# its default in a child, an ignored one stays ignored).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# EVC_TEST_SHARD=K/N: this process runs shard K of N (`make test` runs four, each with
# its own lab). SHARDS names each module's shard, chosen from the modules' times in a
# `make test` (durations in the commits that set them) so that the shards take about as
# long: the users of the ``deployed`` fixture share shard 1 (it builds and deploys once
# per lab), the arm64 module (builds under emulation, 7 minutes) has shard 4 to itself.
# A module not named runs in shard 1; with fewer shards, a higher one's modules run in
# the last.
SHARD, SHARDS_N = map(int, os.environ.get("EVC_TEST_SHARD", "1/1").split("/"))
SHARDS = {
    "test_deploy_lab.py": 2,
    "test_models_lab.py": 2,
    "test_registry_lab.py": 2,
    "test_registry_access_lab.py": 2,
    "test_lab_lifecycle.py": 2,
    "test_light_lab.py": 2,
    "test_grafana_up.py": 2,
    "test_demo_lab.py": 3,
    "test_injection_lab.py": 3,
    "test_cert_failures.py": 3,
    "test_cert_rotation.py": 3,
    "test_mixed_fleet_lab.py": 4,
}
# Overridable so that two checkouts can run their lab tests side by side; without
# EVC_TEST_SUBNET the first free /24 from 172.30.0.0 on (shard K > 1: from 172.30.64*(K-1).0;
# a leftover network may hold it).
LAB_NAME = os.environ.get("EVC_TEST_LAB", "evctest") + (str(SHARD) if SHARD > 1 else "")
SUBNET_FROM = f"172.30.{64 * (SHARD - 1) % 256}.0/24"


def _shard(item) -> int:
    return min(SHARDS.get(item.fspath.basename, 1), SHARDS_N) if SHARDS_N > 1 else 1


def _order(item) -> int:
    """Modules without ``trusted`` first, then those with it (consecutive: they share
    one push, see :class:`Trust`), the mixed-fleet module last: its arm64 images
    (minutes under emulation on a fresh machine) build in the background from the
    lab's start (:func:`lab_session`) while the other tests run."""
    if item.fspath.basename == "test_mixed_fleet_lab.py":
        return 2
    return int(any("trusted" in i.fixturenames for i in item.session.items
                   if i.path == item.path))  # fmt: skip


def pytest_collection_modifyitems(config, items):
    """Only this process's shard's modules, in :func:`_order` (stable within a module)."""
    for item in items:
        if "/tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
    other = [i for i in items if "/tests/lab/" in str(i.fspath) and _shard(i) != SHARD]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [i for i in items if i not in other]
    lab = [i for i in items if "/tests/lab/" in str(i.fspath)]
    if lab:
        order = {i.path: _order(i) for i in lab}
        lab.sort(key=lambda i: order[i.path])  # stable: modules and tests keep their order
        items[:] = [i for i in items if i not in lab] + lab


def _arm64_images() -> None:
    """The arm64 node image and the arm64 model base under it (cached by content hash)."""
    ensure_arm64_node_image(docker_client())


@pytest.fixture(scope="session")
def lab_session(tmp_path_factory, request):
    """(workspace, parsed `evc lab up --json` output). Starts the arm64 images' build
    in the background when the mixed-fleet module is to run (it joins the thread)."""
    if any(i.fspath.basename == "test_mixed_fleet_lab.py" for i in request.session.items):
        request.config.evc_arm64_images = threading.Thread(target=_arm64_images, daemon=True)
        request.config.evc_arm64_images.start()
    root = tmp_path_factory.mktemp("labws")
    given = os.environ.get("EVC_TEST_SUBNET") if SHARD == 1 else None
    subnet = given or free_subnet(docker_client(), f"evc-{LAB_NAME}", SUBNET_FROM)
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


def on_node(ws, node: str, *cmd: str) -> tuple[int, str]:
    """(exit code, output stripped) of ``cmd`` in a lab node's container: a command
    that may run up to three times (:func:`evc.lab.nodes.exec_read` asks an empty
    answer again)."""
    code, out = exec_read(Nodes(ws).get(node), list(cmd))
    return code, out.strip()


def evc_json(*args, env, check=0):
    """Run ``evc ARGS --json`` and parse its output."""
    return json.loads(evc(*args, "--json", env=env, check=check, timeout=900).stdout)


class Trust:
    """Whether the lab's nodes trust the registry: changed only when a module needs the
    other state, so consecutive modules that use ``trusted`` share one `cert push all`
    and one `cert revoke all` (a push and a revoke took 16 s and 20 s under load: eight
    modules each paid both). ``state`` None: unknown (nodes recreated, a test failed),
    the next push and revoke run whatever it was."""

    def __init__(self, env: dict):
        self.env = env
        self.state: bool | None = False  # `lab up` enrols nodes that trust nothing
        self.deployed = False  # the `deployed` model runs: its pullers follow the trust

    def push(self) -> None:
        if self.state is not True:
            evc("cert", "push", "all", env=self.env, check=0)
            if self.deployed:  # a revoke took the pullers with the queue credential
                evc("fleet", "converge", "all", env=self.env, check=None)
            self.state = True

    def revoke(self) -> None:
        if self.state is not False:
            evc("cert", "revoke", "all", env=self.env, check=0)
            self.state = False


@pytest.fixture(scope="session")
def trust(lab_session):
    return Trust({"EVC_HOME": str(lab_session[0].root)})


def _module_uses(request, fixture: str) -> bool:
    """Whether a test of the requesting test's module (in this session) uses ``fixture``."""
    path = request.node.path
    return any(fixture in i.fixturenames for i in request.session.items if i.path == path)


@pytest.fixture(autouse=True)
def _untrusted_unless_declared(request):
    """A test of a lab module without ``trusted`` runs on nodes that trust nothing, as
    `lab up` made them (tests that push themselves revoke again)."""
    if _module_uses(request, "lab_session") and not _module_uses(request, "trusted"):
        request.getfixturevalue("trust").revoke()


@pytest.fixture(scope="module")
def trusted(lab_session, trust, request):
    """Every node trusts the registry for this module (yields the workspace); the next
    module without it revokes (:func:`_untrusted_unless_declared`). Its tests leave every
    node trusting the current CA (a ``finally`` puts back what a test breaks); after a
    failed test the push runs again."""
    if request.session.testsfailed:
        trust.state = None
    trust.push()
    yield lab_session[0]


DEPLOYED = "ifaces"  # the model of the `deployed` fixture


@pytest.fixture(scope="session")
def deployed(lab_session, trust):
    """DEPLOYED:1 (face-haar) running on node1 and node2, node3 without it, for the
    modules that run jobs on it (built, pushed and deployed once a session). The nodes
    trust the registry for the deploy (a running container needs it no more): the
    module revokes it unless it uses ``trusted``."""
    env = {"EVC_HOME": str(lab_session[0].root)}
    trust.push()
    evc_json("model", "build", DEPLOYED, "--runtime", "face-haar", "--version", "1", env=env)
    evc_json("model", "push", f"{DEPLOYED}:1", env=env)
    evc_json("model", "deploy", f"{DEPLOYED}:1", "node1,node2", env=env)
    trust.deployed = True
    yield
    trust.deployed = False
    evc("model", "undeploy", DEPLOYED, "all", env=env)
    evc("model", "delete", f"{DEPLOYED}:1", "--force", env=env)
