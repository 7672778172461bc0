"""Deploy, redeploy, roll out in batches past a stopped node, roll back, undeploy: for real.

Nodes run images by the digest recorded at push, from the registry's read-only
endpoint: a tag pushed again cannot change what a deploy runs.
"""

import json

import pytest

from evc import registry
from evc.engine import docker_client, find_image
from tests.conftest import evc
from tests.lab.conftest import evc_json as _json
from tests.lab.conftest import on_node

MODEL = "dfaces"
CONFINEMENT = (
    "{{json .HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}} {{.HostConfig.ReadonlyRootfs}} "
    "{{.HostConfig.Tmpfs}}"
)
NODES = ("node1", "node2", "node3")


def _running(ws, node: str, field: str = "{{.Config.Image}}") -> str | None:
    """The image (reference, or with field ``{{.Image}}`` its id) that the node's model
    container runs, or None if it has none."""
    code, out = on_node(ws, node, "docker", "inspect", "--format", field, f"evc-model-{MODEL}")
    return out if code == 0 else None


def _on_node(ws, node: str, *cmd: str) -> str:
    code, out = on_node(ws, node, *cmd)
    assert code == 0, out
    return out


def _states(run: dict) -> dict[str, str]:
    return {h: r["state"] for h, r in run["hosts"].items()}


def _pinned(ws, env, version: str) -> str:
    """The reference a node must run for a version: its catalogue digest, read-only endpoint."""
    digest = _json("model", "show", f"{MODEL}:{version}", env=env)["registry_digest"]
    assert digest.startswith("sha256:")
    return f"{registry.load(ws).ro_address}/evc/{MODEL}@{digest}"


@pytest.fixture(scope="module")
def versions(lab_session, trusted):
    """Two pushed versions of a face-haar model: {version: image}."""
    env = {"EVC_HOME": str(lab_session[0].root)}
    out = {}
    for version in ("1", "2"):
        build = ["model", "build", MODEL, "--runtime", "face-haar", "--version", version]
        out[version] = _json(*build, env=env)["image"]
        _json("model", "push", f"{MODEL}:{version}", env=env)
    yield out
    evc("model", "undeploy", MODEL, "all", env=env)
    for version in out:
        evc("model", "delete", f"{MODEL}:{version}", "--force", env=env)


def test_deploy_is_health_checked_recorded_and_idempotent(lab_ws, lab_env, versions):
    # what a container of an image from before the non-root user left behind, as root,
    # and links a model container could plant in its volume: to folders outside it,
    # where inbox belongs and deeper down; taking the volume over follows neither
    jobs = f"/var/lib/evc/jobs/models/{MODEL}"
    _on_node(lab_ws, "node1", "sh", "-c", f"rm -rf {jobs} /opt/bait"
             f" && mkdir -p {jobs}/work/old /opt/bait/in /opt/bait/deep"
             f" && touch {jobs}/serve.alive {jobs}/work/old/a.png /opt/bait/deep/f"
             f" && ln -s /opt/bait/in {jobs}/inbox"
             f" && ln -s /opt/bait/deep {jobs}/work/link")  # fmt: skip
    first = _json("model", "deploy", f"{MODEL}:1", "all", env=lab_env)
    assert set(_states(first["run"]).values()) == {"changed"}
    # The container's image (docker inspect on the node) is the digest in the catalogue.
    pinned = _pinned(lab_ws, lab_env, "1")
    assert {n: _running(lab_ws, n) for n in NODES} == dict.fromkeys(NODES, pinned)
    image_id = docker_client().images.get(versions["1"]).id
    assert {_running(lab_ws, n, "{{.Image}}") for n in NODES} == {image_id}
    # the model runs as the images' unprivileged user, and owns its job volume alone
    for node in ("node1", "node2", "node3"):
        assert _running(lab_ws, node, "{{.Config.User}}") == "10001:10001"
        assert _on_node(lab_ws, node, "docker", "exec", f"evc-model-{MODEL}", "id", "-u") == "10001"
        top = _on_node(lab_ws, node, "docker", "top", f"evc-model-{MODEL}", "-o", "pid,uid")
        assert [ln.split()[1] for ln in top.splitlines()[1:]] == ["10001"], top
        assert _running(lab_ws, node, CONFINEMENT).split(" ", 3) == [
            '["ALL"]',
            "[no-new-privileges]",
            "true",
            "map[/tmp:rw,nosuid,nodev,noexec,size=64m]",
        ]
        assert _running(lab_ws, node, "{{.HostConfig.Memory}}") == str(1 << 30)  # the default
        assert _on_node(lab_ws, node, "stat", "-c", "%u:%g %a", jobs, f"{jobs}/inbox",
                        f"{jobs}/outbox").splitlines() == ["10001:10001 700"] * 3  # fmt: skip
    owners = _on_node(lab_ws, "node1", "find", jobs, "!", "-uid", "10001")
    assert owners == "", f"left to root: {owners}"
    bait = _on_node(lab_ws, "node1", "stat", "-c", "%u:%g %a", "/opt/bait/in", "/opt/bait/deep",
                    "/opt/bait/deep/f")  # fmt: skip
    assert bait.splitlines() == ["0:0 755", "0:0 755", "0:0 644"]

    again = _json("model", "deploy", f"{MODEL}:1", "all", env=lab_env)
    assert set(_states(again["run"]).values()) == {"ok"}
    assert all(r["changed"] == 0 for r in again["run"]["hosts"].values())

    shown = _json("model", "show", f"{MODEL}:1", env=lab_env)
    assert sorted(shown["deployed_on"]) == ["node1", "node2", "node3"]
    refused = evc("model", "delete", f"{MODEL}:1", env=lab_env, check=2)
    assert "deployed" in refused.stderr and "--force" in refused.stderr


def test_a_tag_pushed_again_behind_the_catalogue_changes_no_deploy(lab_ws, lab_env, versions):
    """Whoever can push (here the controller's own credential, by hand) puts version 2's
    image under version 1's tag: deploying version 1 again still runs version 1's image,
    the one recorded at push, and changes nothing."""
    client = docker_client()
    v1, v2 = client.images.get(versions["1"]), client.images.get(versions["2"])
    repo, _, tag = versions["1"].rpartition(":")
    registry.login(lab_ws, client)
    try:
        v2.tag(repo, tag)
        pushed = list(client.images.push(repo, tag=tag, stream=True, decode=True))
        assert not [ln for ln in pushed if "error" in ln], pushed
        api = registry.api(lab_ws)
        assert api.manifest_digest(f"evc/{MODEL}", tag) == _json(
            "model", "show", f"{MODEL}:2", env=lab_env)["registry_digest"]  # fmt: skip
        run = _json("model", "deploy", f"{MODEL}:1", "node2", env=lab_env)["run"]
        assert _states(run) == {"node2": "ok"}
        assert _running(lab_ws, "node2") == _pinned(lab_ws, lab_env, "1")
        assert _running(lab_ws, "node2", "{{.Image}}") == v1.id
    finally:  # the tag back on version 1's image (the same manifest, the same digest)
        v1.tag(repo, tag)
        list(client.images.push(repo, tag=tag, stream=True, decode=True))


def test_a_version_rebuilt_and_pushed_again_is_pulled_again(lab_ws, lab_env, versions):
    before = _pinned(lab_ws, lab_env, "1")
    replaced = _json("model", "show", f"{MODEL}:1", env=lab_env)["image_id"]
    rebuilt = _json("model", "build", MODEL, "--runtime", "face-haar", "--version", "1",
                    "--force", "--owner", "qa", env=lab_env)  # fmt: skip
    assert rebuilt["image"] == versions["1"]  # same tag, new image
    assert rebuilt["image_id"] != replaced and find_image(docker_client(), replaced) is None
    _json("model", "push", f"{MODEL}:1", env=lab_env)
    after = _pinned(lab_ws, lab_env, "1")
    assert after != before  # a new digest, recorded at push
    run = _json("model", "deploy", f"{MODEL}:1", "node1", env=lab_env)["run"]
    assert _states(run) == {"node1": "changed"}
    assert _running(lab_ws, "node1") == after
    assert _running(lab_ws, "node1", "{{.Image}}") == rebuilt["image_id"]
    assert _running(lab_ws, "node2") == before  # not targeted


def test_rolling_deploy_stops_at_a_dead_node_and_rollback_restores(lab_ws, lab_env, versions):
    before = {n: _running(lab_ws, n) for n in NODES}
    evc("lab", "stop", "node2", env=lab_env)
    try:
        proc = evc(
            "model", "deploy", f"{MODEL}:2", "all", "--serial", "1", "--max-fail-percent", "0",
            "--json", env=lab_env, check=1,
        )  # fmt: skip
    finally:
        evc("lab", "start", "node2", env=lab_env)
    states = _states(json.loads(proc.stdout)["run"])
    # node1 went first and got v2; node2 was down; the rollout stopped before node3.
    assert states == {"node1": "changed", "node2": "unreachable", "node3": "skipped"}
    assert _running(lab_ws, "node1") == _pinned(lab_ws, lab_env, "2")
    assert _running(lab_ws, "node3") == before["node3"]
    models = _json("model", "list", env=lab_env)
    where = {n: m["version"] for m in models if m["name"] == MODEL for n in m["deployed_on"]}
    assert where == {"node1": "2", "node2": "1", "node3": "1"}

    back = _json("model", "rollback", MODEL, "node1", env=lab_env)
    assert back["versions"] == {"node1": "1"} and _states(back["run"]) == {"node1": "changed"}
    assert _running(lab_ws, "node1") == before["node1"]  # the very image it ran before


def test_rollback_on_failure_and_undeploy(lab_ws, lab_env, versions):
    before = _running(lab_ws, "node3")
    # A memory limit too small for the selftest fails the health check on every node.
    proc = evc(
        "model", "deploy", f"{MODEL}:2", "node3", "--memory", "8m", "--rollback-on-failure",
        "--json", env=lab_env, check=1,
    )  # fmt: skip
    result = json.loads(proc.stdout)
    assert _states(result["run"]) == {"node3": "failed"}
    assert result["rolled_back"] == {"node3": "1"} and _running(lab_ws, "node3") == before

    gone = _json("model", "undeploy", MODEL, "all", env=lab_env)
    assert set(_states(gone["run"]).values()) == {"changed"}
    assert all(_running(lab_ws, n) is None for n in NODES)
    listed = [m for m in _json("model", "list", env=lab_env) if m["name"] == MODEL]
    assert listed and not [m for m in listed if m["deployed_on"]]  # the session's own model stays
    again = _json("model", "undeploy", MODEL, "all", env=lab_env)
    assert set(_states(again["run"]).values()) == {"ok"}
