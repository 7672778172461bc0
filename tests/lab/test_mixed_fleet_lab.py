"""A mixed fleet for real (issue 16): two amd64 nodes and one arm64 node (the hybrid
node: arm64 userland under qemu-user, see the README), one model version built for
both arches, pushed as an image index, each node running its own arch by digest.

The lab is the session's (tests/lab/conftest.py), its node3 recreated as the arm64
node; the arm64 node image is built once under emulation and cached by content hash."""

import json

import pytest

from evc import registry
from evc.engine import docker_client
from evc.infer.jobs import shard_costs
from tests.conftest import evc
from tests.lab.conftest import LAB_NAME, on_node
from tests.lab.conftest import evc_json as _json

MODEL = "mfaces"
PROFILES = {"node1": "rpi", "node2": "nuc", "node3": "rpi-arm64"}  # node1, node2: as the session's
NODES = {"node1": "amd64", "node2": "amd64", "node3": "arm64"}
PICTURES = ("astronaut", "coffee", "chelsea", "rocket", "camera")
LIST_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.index.v1+json"
)


@pytest.fixture(scope="module")
def mixed(lab_session, trusted, trust, pytestconfig, request):
    """(workspace, env): the session's lab with node3 recreated as an rpi-arm64 node
    and enrolled as the arm64 builder (node1 rpi and node2 nuc stay as they are, amd64),
    every node trusting the registry, for MODEL:1 built for both arches (the default:
    the enrolled arches). No lab of its own: the session's comes up once. node3 is put
    back as the session had it (an orin) only if other tests follow."""
    images = getattr(pytestconfig, "evc_arm64_images", None)  # started with the session's
    if images is not None:  # lab (conftest); `lab up` builds what is left
        images.join()
    ws = lab_session[0]
    env = {"EVC_HOME": str(ws.root)}
    profiles = ",".join(PROFILES.values())
    up = evc("lab", "up", "--nodes", "3", "--profile", profiles, "--json", env=env, timeout=1800)
    try:
        assert up.returncode == 0, f"evc lab up failed:\n{up.stderr}\n{up.stdout}"
        # node3 enrolled again with role builder: arm64 variants are built on it.
        (node3,) = [d for d in _json("device", "list", env=env) if d["name"] == "node3"]
        evc("device", "remove", "node3", env=env, check=0)
        evc("device", "add", "node3", "--host", node3["host"], "--role", "builder", "--group",
            "lab", "--label", f"lab={LAB_NAME}", "--label", "profile=rpi-arm64", env=env,
            check=0)  # fmt: skip
        trust.state = None  # node3 is new
        trust.push()
        yield ws, env
    finally:
        module = request.node.path
        if any(item.path != module for item in request.session.items[_last(request) + 1 :]):
            evc("lab", "up", "--nodes", "3", env=env, check=0, timeout=900)  # node3: orin
            trust.state = None


def _last(request) -> int:
    """Index of this module's last test in the session."""
    items = request.session.items
    return max(i for i, item in enumerate(items) if item.path == request.node.path)


def _on_node(ws, node: str, *cmd: str) -> str:
    code, out = on_node(ws, node, *cmd)
    assert code == 0, out
    return out


def test_facts_report_each_nodes_own_arch(mixed):
    ws, env = mixed
    arches = {d["name"]: d["arch"] for d in _json("device", "list", env=env)}
    assert arches == NODES  # as the facts script reports them, from the node itself
    assert _on_node(ws, "node3", "python3", "-c", "import platform; print(platform.machine())") \
        == "aarch64"  # fmt: skip


def test_one_version_for_both_arches_each_node_runs_its_own(mixed):
    ws, env = mixed
    built = _json("model", "build", MODEL, "--runtime", "face-haar", "--version", "1", env=env)
    assert [v["arch"] for v in built["variants"]] == ["amd64", "arm64"]
    # The arm64 variant was built and selftested on the builder (its engine reached over
    # SSH with the pinned host key) and brought back; the builder keeps no tagged copy.
    assert [v["built_on"] for v in built["variants"]] == ["controller", "node3"]
    arm = docker_client().images.get(built["variants"][1]["image"])
    assert arm.attrs["Architecture"] == "arm64" and arm.labels["evc.model.built_on"] == "node3"
    kept = _on_node(ws, "node3", "docker", "images", "-q", "--filter",
                    f"label=evc.model.name={MODEL}", "--filter", "dangling=false")  # fmt: skip
    assert kept == ""
    pushed = _json("model", "push", f"{MODEL}:1", env=env)
    digests = {v["arch"]: v["registry_digest"] for v in pushed["variants"]}
    # The version tag is an index of both, and each variant keeps its own tag.
    api = registry.api(ws)
    index = api._request("GET", f"evc/{MODEL}/manifests/1", headers={"Accept": LIST_TYPES})
    listed = {m["platform"]["architecture"]: m["digest"] for m in index.json()["manifests"]}
    assert listed == digests
    assert set(api.tags(f"evc/{MODEL}")) == {"1", "1-amd64", "1-arm64"}

    deployed = _json("model", "deploy", f"{MODEL}:1", "all", env=env)
    assert deployed["ok"] and deployed["skipped"] == {}
    ro = registry.load(ws).ro_address
    for node, arch in NODES.items():
        image = _on_node(ws, node, "docker", "inspect", "--format", "{{.Config.Image}}",
                         f"evc-model-{MODEL}")  # fmt: skip
        assert image == f"{ro}/evc/{MODEL}@{digests[arch]}"
        ran = _on_node(ws, node, "docker", "image", "inspect", "--format", "{{.Architecture}}",
                       image)  # fmt: skip
        assert ran == arch
    machine = _on_node(ws, "node3", "docker", "exec", f"evc-model-{MODEL}", "python3", "-c",
                       "import platform; print(platform.machine())")  # fmt: skip
    assert machine == "aarch64"


def test_a_job_uses_every_node_and_gives_the_emulated_one_less(mixed, tmp_path):
    """One-item shards from a shared queue: every node takes work, whatever its arch,
    and the emulated arm64 node is measured slower. The next job, paced by those
    measurements (dynamic, no fixed shard size), gives it less than either amd64 node:
    its items are only 2-3x slower, but its hand-over takes several times longer, and
    this short job would be over before it (its cost printed, as measured)."""
    from PIL import Image
    from skimage import data

    ws, env = mixed
    for copy in range(4):
        for name in PICTURES:
            Image.fromarray(getattr(data, name)()).save(tmp_path / f"{copy}-{name}.jpg")
    items = len(PICTURES) * 4
    jobs = []
    for extra in (["--shard-size", "1"], []):
        proc = evc("infer", "run", MODEL, "all", "--data", tmp_path, "--strategy", "dynamic",
                   *extra, "--json", env=env, check=0, timeout=1200)  # fmt: skip
        job = json.loads(proc.stdout)
        assert job["status"] == "success"
        assert sum(n["items"] for n in job["nodes"].values()) == items
        status = _json("infer", "status", job["id"], env=env)
        assert status["state"] == "complete" and status["ok"] == items
        jobs.append(job)
    first, paced = (j["nodes"] for j in jobs)
    print("items/s per node, one-item shards:", {n: v["throughput"] for n, v in first.items()})
    print("items per node, paced:", {n: v["items"] for n, v in paced.items()})
    print("seconds a shard costs beyond its work:", shard_costs(ws, MODEL, "1"))
    assert set(first) == set(NODES)
    assert first["node3"]["throughput"] < min(first["node1"]["throughput"],
                                              first["node2"]["throughput"])  # fmt: skip
    given = {n: paced.get(n, {}).get("items", 0) for n in NODES}
    assert given["node3"] < min(given["node1"], given["node2"])


def test_a_version_without_an_arm64_build_skips_the_arm64_node(mixed):
    ws, env = mixed
    build = ["model", "build", MODEL, "--runtime", "face-haar", "--version", "2"]
    _json(*build, "--arch", "amd64", env=env)
    _json("model", "push", f"{MODEL}:2", env=env)
    proc = evc("model", "deploy", f"{MODEL}:2", "all", "--json", env=env, check=1)
    result = json.loads(proc.stdout)
    assert result["skipped"] == {
        "node3": f"no arm64 build of {MODEL}:2: build it with --arch arm64"
    }
    assert result["versions"] == {"node1": "2", "node2": "2"}
    listed = _json("model", "list", env=env)  # a row per variant, each with its nodes
    running = {
        node: m["version"] for m in listed if m["name"] == MODEL for node in m["deployed_on"]
    }
    assert running == {"node1": "2", "node2": "2", "node3": "1"}


def test_delete_removes_every_variant_and_the_index(mixed):
    ws, env = mixed
    evc("model", "undeploy", MODEL, "all", env=env, check=0)
    evc("model", "delete", f"{MODEL}:1", env=env, check=0)
    assert set(registry.api(ws).tags(f"evc/{MODEL}")) == {"2", "2-amd64"}
    evc("model", "delete", f"{MODEL}:2", env=env, check=0)
    assert registry.api(ws).tags(f"evc/{MODEL}") == []


def test_without_its_builder_an_arm64_build_falls_back_to_emulation(mixed):
    """node3, the arm64 builder, is down: --on builder refuses naming it; the default
    builds under qemu emulation here and says why (the builder path: the first test)."""
    ws, env = mixed
    build = ["model", "build", "bfaces", "--runtime", "face-haar", "--arch", "arm64"]
    evc("lab", "stop", "node3", env=env, check=0)
    refused = evc(*build, "--version", "1", "--on", "builder", env=env, check=1)
    assert "no arm64 builder answers (node3: SSH to" in refused.stderr + refused.stdout
    proc = evc(*build, "--version", "1", env=env, check=0, timeout=1800)
    said = " ".join((proc.stdout + proc.stderr).split())
    assert "building the arm64 variant under qemu emulation here (node3: SSH to" in said
    emulated = _json("model", "show", "bfaces:1", env=env)
    assert emulated["built_on"] == "emulated" and emulated["selftest"]["selftest"] == "ok"
    assert docker_client().images.get(emulated["image"]).attrs["Architecture"] == "arm64"
