"""Pull mode's node side on the lab: after `evc queue up`, `evc cert push` and a deploy,
the node runs the model's puller confined as declared, and a shard XADDed by hand
through the controller's admin connection comes back in the node's results stream."""

import json
import time

import pytest

from evc.engine import docker_client
from evc.lab.nodes import Nodes
from evc.queue import acl, server
from evc.queue.files import files
from evc.queue.streams import GROUP, Shard, announce_key, results_key, work_key
from evc.resources import data_dir
from tests.conftest import evc
from tests.lab.conftest import evc_json

MODEL = "pfaces"
JOB = "pull-lab-1"
PULLER = (
    "{{.State.Running}} {{.HostConfig.NetworkMode}} {{.Config.User}} "
    "{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} "
    '{{index .Config.Labels "evc.role"}} '
    "{{range .Mounts}}{{.Destination}}:{{.RW}},{{end}}"
)


def _on_node(ws, node: str, *cmd: str) -> tuple[int, str]:
    container = docker_client().containers.get(Nodes(ws).container_name(node))
    code, out = container.exec_run(list(cmd))
    return code, out.decode().strip()


@pytest.fixture(scope="module")
def pulling(lab_session):
    """The queue up, node1 trusted (with its queue credential), MODEL:1 deployed there."""
    ws = lab_session[0]
    env = {"EVC_HOME": str(ws.root)}
    evc_json("queue", "up", env=env)
    try:
        evc("cert", "push", "node1", env=env, check=0)
        evc_json("model", "build", MODEL, "--runtime", "face-haar", "--version", "1", env=env)
        evc_json("model", "push", f"{MODEL}:1", env=env)
        evc_json("model", "deploy", f"{MODEL}:1", "node1", env=env)
        yield ws
    finally:
        evc("model", "undeploy", MODEL, "node1", env=env, check=None)
        evc("model", "delete", f"{MODEL}:1", "--force", env=env, check=None)
        evc("cert", "revoke", "node1", env=env, check=None)
        evc("queue", "down", env=env, check=None)
        files(ws).config.unlink(missing_ok=True)  # no queue set up: later pushes give none


def test_the_puller_runs_confined_and_answers_a_shard_from_the_queue(pulling):
    ws = pulling
    code, out = _on_node(ws, "node1", "docker", "inspect", "--format", PULLER, f"evc-pull-{MODEL}")
    assert code == 0, out
    running, network, user, read_only, caps, security, role, mounts = out.split(" ", 7)
    assert (running, network, user, read_only) == ("true", "bridge", "10001:10001", "true")
    assert json.loads(caps) == ["ALL"] and "no-new-privileges" in security and role == "puller"
    assert sorted(mounts.strip(",").split(",")) == ["/etc/evc/queue:false", "/jobs:true"]
    model_net = _on_node(ws, "node1", "docker", "inspect", "--format",
                         "{{.HostConfig.NetworkMode}}", f"evc-model-{MODEL}")  # fmt: skip
    assert model_net == (0, "none")  # the process that parses inputs has no network
    assert _on_node(ws, "node1", "stat", "-c", "%u %a", "/etc/evc/queue/queue.json") == (
        0, "10001 400",
    )  # fmt: skip
    assert _on_node(ws, "node1", "stat", "-c", "%U:%g %a", "/etc/evc/queue")[1] == "root:10001 750"

    r = server.admin(ws)
    acl.grant(ws, JOB, ["node1"])
    server.sync_acl(ws)
    face = (data_dir("model_images") / "common" / "evc_infer" / "sample.jpg").read_bytes()
    try:
        r.xgroup_create(work_key(JOB), GROUP, id="0", mkstream=True)
        entry = r.xadd(work_key(JOB), Shard(0, ["cam/face.jpg"], [face]).encode())
        params = json.dumps({"conf": None, "iou": None, "imgsz": None})
        r.xadd(announce_key("node1"), {
            "job": JOB, "model": MODEL, "version": "1", "params": params, "lease": "30",
        })  # fmt: skip
        deadline = time.monotonic() + 120
        reports = []
        while not reports and time.monotonic() < deadline:
            reports = r.xrange(results_key(JOB, "node1"))
            time.sleep(0.5)
        assert reports, "no report within 120 s"
        fields = reports[0][1]
        assert fields[b"entry"].decode() == entry.decode() and fields[b"shard"] == b"0"
        (result,) = json.loads(fields[b"results"])
        assert result["item"] == "cam/face.jpg" and result["ok"] is True
        assert len(result["detections"]) >= 1
        assert r.xpending(work_key(JOB), GROUP)["pending"] == 0  # acked
    finally:
        r.delete(announce_key("node1"), work_key(JOB), results_key(JOB, "node1"))
        acl.grant(ws, JOB, [])
        server.sync_acl(ws)
    # Revoking the node's trust takes the credential and the puller away.
    evc("cert", "revoke", "node1", env={"EVC_HOME": str(ws.root)}, check=0)
    assert _on_node(ws, "node1", "test", "-e", "/etc/evc/queue")[0] != 0
    code, _ = _on_node(ws, "node1", "docker", "inspect", f"evc-pull-{MODEL}")
    assert code != 0
