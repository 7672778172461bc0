"""Pull mode on the lab, end to end: `evc lab up` runs the queue, `cert push` gives each
node its queue credential, the deploy runs the model's puller beside the model (confined
as declared), and `evc infer run --mode pull` ends with exactly one row per item, through
a puller killed mid-job and the queue restarted mid-job (its append-only file keeps the
streams)."""

import json
import os
import subprocess
import time

import pytest
from PIL import Image
from skimage import data

from evc import db as evcdb
from evc.lab.nodes import Nodes
from evc.queue import server
from tests.conftest import EVC, evc
from tests.lab.conftest import DEPLOYED as MODEL
from tests.lab.conftest import on_node

PICTURES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field")
NODES = "node1,node2"  # where the session's model runs
PULLER = (
    "{{.State.Running}} {{.HostConfig.NetworkMode}} {{.Config.User}} "
    "{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} "
    '{{index .Config.Labels "evc.role"}} '
    "{{range .Mounts}}{{.Destination}}:{{.RW}},{{end}}"
)


def _dataset(root, copies: int):
    for copy in range(copies):
        (root / str(copy)).mkdir(parents=True)
        for name in PICTURES:
            Image.fromarray(getattr(data, name)()).save(root / str(copy) / f"{name}.jpg")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 20)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


@pytest.fixture(scope="module")
def pulling(lab_session, trusted, deployed):
    """The session's model on node1 and node2 with their pullers: a `cert revoke` of an
    earlier module took them away, and `fleet converge` brings back what is missing."""
    ws = lab_session[0]
    env = {"EVC_HOME": str(ws.root)}
    assert server.running(ws)  # `evc lab up` started it
    evc("fleet", "converge", NODES, env=env, check=0)
    return ws, env


def _rows(ws, job_id: str) -> list[dict]:
    db = evcdb.workspace_db(ws)
    return list(db.query("SELECT * FROM results WHERE job_id = ? ORDER BY item", [job_id]))


def _check(ws, job_id: str, items: list[str]) -> None:
    """One final row per item: the corrupt one an error, every other ok; the queue holds
    nothing of the job any more."""
    rows = _rows(ws, job_id)
    assert [r["item"] for r in rows] == items
    assert {r["item"] for r in rows if r["state"] != "ok"} == {"corrupt.jpg"}
    assert all(r["state"] in ("ok", "error") for r in rows)
    left = list(server.admin(ws).scan_iter(match=f"evc:job:{job_id}:*"))
    assert left == []


def test_the_puller_runs_confined_and_a_pull_job_ends_once_per_item(pulling, tmp_path):
    ws, env = pulling
    code, out = on_node(ws, "node1", "docker", "inspect", "--format", PULLER, f"evc-pull-{MODEL}")
    assert code == 0, out
    running, network, user, read_only, caps, security, role, mounts = out.split(" ", 7)
    assert (running, network, user, read_only) == ("true", "bridge", "10001:10001", "true")
    assert json.loads(caps) == ["ALL"] and "no-new-privileges" in security and role == "puller"
    assert sorted(mounts.strip(",").split(",")) == ["/etc/evc/queue:false", "/jobs:true"]
    model_net = on_node(ws, "node1", "docker", "inspect", "--format",
                         "{{.HostConfig.NetworkMode}}", f"evc-model-{MODEL}")  # fmt: skip
    assert model_net == (0, "none")  # the process that parses inputs has no network
    assert on_node(ws, "node1", "stat", "-c", "%u %a", "/etc/evc/queue/queue.json") == (
        0, "10001 400",
    )  # fmt: skip

    items = _dataset(tmp_path / "data", 3)
    looks = "SELECT count(*) FROM ansible_runs WHERE playbook = 'fleet_status.yml'"
    db = evcdb.workspace_db(ws)
    before = db.execute(looks).fetchone()[0]
    proc = evc("infer", "run", MODEL, NODES, "--mode", "pull", "--data", tmp_path / "data",
               "--json", env=env)  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    job = json.loads(proc.stdout)
    assert job["mode"] == "pull" and job["ok"] == len(items) - 1 and job["failed"] == 1
    assert set(job["nodes"]) == {"node1", "node2"}  # both pulled work
    _check(ws, job["id"], items)
    # The pullers named what they serve: the queue's CLIENT LIST found both usable.
    assert db.execute(looks).fetchone()[0] == before


def test_a_puller_killed_and_the_queue_restarted_mid_job_lose_nothing(pulling, tmp_path):
    ws, env = pulling
    items = _dataset(tmp_path / "data", 8)
    cmd = [*EVC, "infer", "run", MODEL, NODES, "--mode", "pull", "--data",
           str(tmp_path / "data"), "--json"]  # fmt: skip
    started = time.time()
    run = subprocess.Popen(cmd, env={**os.environ, **env}, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        db = evcdb.workspace_db(ws)
        deadline = time.monotonic() + 300
        job_id = None
        while time.monotonic() < deadline and run.poll() is None:
            found = list(db.query("SELECT id FROM jobs WHERE mode = 'pull' AND created >= ?",
                                  [started]))  # fmt: skip
            job_id = found[0]["id"] if found else None
            if job_id and sum(r["state"] == "ok" for r in _rows(ws, job_id)) >= 6:
                break
            time.sleep(0.3)
        assert run.poll() is None, "the job ended before anything could be broken"
        # node1's puller dies holding whatever it held; the queue goes down and up.
        killed = Nodes(ws).get("node1").exec_run(["docker", "kill", f"evc-pull-{MODEL}"])
        assert killed.exit_code == 0, killed.output
        evc("queue", "down", env=env, check=0)
        evc("queue", "up", env=env, check=0)
        out, err = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
        evc("fleet", "converge", "node1", env=env, check=None)  # the puller back
    assert run.returncode in (0, 1), err
    job = json.loads(out)
    assert job["id"] == job_id and job["state"] == "complete"
    assert job["ok"] == len(items) - 1 and job["failed"] == 1
    _check(ws, job_id, items)
