"""Inference jobs on the real lab: every item accounted for once, through corrupt
images, a node stopped mid-job, Ctrl-C and resume (which costs the work left and
leaves no file on the nodes), zip and video inputs."""

import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest

from evc import db as evcdb
from evc.ansible import run_playbook
from evc.engine import docker_client
from evc.infer import runner
from evc.lab.nodes import Nodes, exec_read
from tests.conftest import evc
from tests.lab.conftest import DEPLOYED as MODEL
from tests.lab.conftest import evc_json as _json

PICTURES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Copies of skimage pictures (one astronaut face each) plus one corrupt jpg."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("data")
    for copy in range(4):
        (root / str(copy)).mkdir()
        for name in PICTURES:
            Image.fromarray(getattr(data, name)()).save(root / str(copy) / f"{name}.jpg")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 20)
    return root


def _items(data_root):
    return sorted(p.relative_to(data_root).as_posix() for p in data_root.rglob("*.jpg"))


def _check_complete(ws, job_id, items):
    """Exactly one final row per item; the corrupt one an error; one face per astronaut."""
    db = evcdb.workspace_db(ws)
    rows = list(db.query("SELECT * FROM results WHERE job_id = ? ORDER BY item", [job_id]))
    assert [r["item"] for r in rows] == items
    errors = {r["item"]: r["error"] for r in rows if r["state"] != "ok"}
    assert set(errors) == {"corrupt.jpg"}, errors
    (bad,) = [r for r in rows if r["item"] == "corrupt.jpg"]
    assert bad["state"] == "error" and bad["error"]
    faces = list(db.query(
        "SELECT item, COUNT(*) AS n FROM detections WHERE job_id = ? AND item LIKE "
        "'%astronaut.jpg' GROUP BY item", [job_id],
    ))  # fmt: skip
    assert [f["n"] for f in faces] == [1] * sum(i.endswith("astronaut.jpg") for i in items)
    job = _json("infer", "status", job_id, env={"EVC_HOME": str(ws.root)})
    assert job["state"] == "complete" and job["ok"] == len(items) - 1 and job["failed"] == 1
    return job


def test_job_accounts_for_every_item_and_reports_the_node_without_the_model(
    lab_ws, lab_env, deployed, dataset
):
    proc = evc("infer", "run", MODEL, "--data", dataset, "--json", env=lab_env, check=1)
    job = json.loads(proc.stdout)
    assert job["status"] == "partial" and job["version"] == "1"
    assert job["skipped_nodes"] == {"node3": f"{MODEL}:1 is not deployed here"}
    _check_complete(lab_ws, job["id"], _items(dataset))
    assert set(job["nodes"]) == {"node1", "node2"}
    assert sum(n["items"] for n in job["nodes"].values()) == len(_items(dataset))

    listed = {j["id"]: j for j in _json("infer", "list", env=lab_env)}
    assert listed[job["id"]]["state"] == "complete"
    csv = evc("infer", "results", job["id"], "--csv", env=lab_env, check=0).stdout
    assert csv.splitlines()[0].startswith("item,state,node,error")
    assert sum(",face," in line for line in csv.splitlines()) >= 4


def _wait_for_shard(ws, job_node=None, timeout=120):
    """Id of the newest job once one of its shards runs (on ``job_node`` if given)."""
    db = evcdb.workspace_db(ws)
    deadline = time.time() + timeout
    while time.time() < deadline:
        row = next(iter(db.query(
            "SELECT s.job_id FROM shards s JOIN jobs j ON j.id = s.job_id "
            "WHERE s.state = 'running' AND (? IS NULL OR s.node = ?) "
            "ORDER BY j.created DESC LIMIT 1", [job_node, job_node],
        )), None)  # fmt: skip
        if row:
            return row["job_id"]
        time.sleep(0.2)
    pytest.fail("no shard started")


def _start_job(env, dataset, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "evc", "infer", "run", MODEL, "node1,node2", "--data",
         str(dataset), "--json", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a process group of its own, as a terminal's Ctrl-C sees it
    )  # fmt: skip


def test_a_node_stopped_mid_job_loses_and_duplicates_nothing(lab_ws, lab_env, deployed, dataset):
    import os

    env = {**os.environ, **lab_env}
    # node2 slowed to a crawl, so its shard is surely still running when the node stops
    node2 = docker_client().containers.get(Nodes(lab_ws).container_name("node2"))
    cpus = str(node2.attrs["HostConfig"]["NanoCpus"] / 1e9)

    def limit(value):  # docker-py's update() has no NanoCpus, which lab nodes are made with
        subprocess.run(["docker", "update", "--cpus", value, node2.name], check=True)

    try:
        limit("0.05")
        proc = _start_job(env, dataset, "--strategy", "round-robin")
        job_id = _wait_for_shard(lab_ws, "node2")
        evc("lab", "stop", "node2", env=lab_env)
        out, err = proc.communicate(timeout=600)
    finally:
        limit(cpus)
        evc("lab", "start", "node2", env=lab_env)
    job = _check_complete(lab_ws, job_id, _items(dataset))
    assert set(job["nodes"]) == {"node1"}, err  # node2's half was re-run on node1
    shards = list(evcdb.workspace_db(lab_ws).query(
        "SELECT node, state FROM shards WHERE job_id = ?", [job_id]
    ))  # fmt: skip
    assert {"node": "node2", "state": "lost"} in shards or any(
        s["node"] == "node2" and s["state"] == "failed" for s in shards
    ), shards


def test_ctrl_c_leaves_a_resumable_job(lab_ws, lab_env, deployed, dataset, tmp_path):
    import os

    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for item in _items(dataset):
            z.write(dataset / item, item)
    proc = _start_job({**os.environ, **lab_env}, archive, "--shard-size", "8")
    job_id = _wait_for_shard(lab_ws)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and f"evc infer resume {job_id}" in err
    assert "Traceback" not in err
    assert _json("infer", "status", job_id, env=lab_env)["state"] == "interrupted"

    resumed = json.loads(evc("infer", "resume", job_id, "--json", env=lab_env, check=1).stdout)
    assert resumed["id"] == job_id
    _check_complete(lab_ws, job_id, _items(dataset))


def _files_left(ws, job_id, *folders):
    """{node: the job's files (by name, or in a work folder named for its shard) in these
    folders of the model's job folder} on node1 and node2."""
    left = {}
    for node in ("node1", "node2"):
        container = docker_client().containers.get(Nodes(ws).container_name(node))
        paths = [f"/var/lib/evc/jobs/models/{MODEL}/{f}".rstrip("/") for f in folders]
        code, found = exec_read(container, ["find", *paths, "-type", "f", "-path", f"*{job_id}*"])
        assert code == 0, found
        left[node] = found.split()
    return left


def test_a_resume_after_ctrl_c_costs_the_work_left_and_leaves_no_files(
    lab_ws, lab_env, deployed, dataset, tmp_path
):
    """Ctrl-C a 97-item job mid-way, resume it: the resume takes about the
    time of the work left (here 20 to 120 s, by the machine's load), far below a shard
    timeout, which a resumed shard named like an interrupted one used to wait out (392 s
    for 224 items) when a module the Ctrl-C left waiting on the node took its answer;
    the Ctrl-C withdraws the shards it had sent; no shard fails; no file is left."""
    import os

    data = tmp_path / "big"
    for copy in range(4):
        shutil.copytree(dataset, data / str(copy), ignore=shutil.ignore_patterns("corrupt.jpg"))
    shutil.copy(dataset / "corrupt.jpg", data)
    items = _items(data)
    assert len(items) == 97
    proc = _start_job({**os.environ, **lab_env}, data, "--shard-size", "8")
    job_id = _wait_for_shard(lab_ws)
    db = evcdb.workspace_db(lab_ws)
    deadline = time.time() + 180
    done = "SELECT 1 FROM shards WHERE job_id = ? AND state = 'done'"

    def queued():  # a node holds a shard queued behind the one it runs
        inboxes = _files_left(lab_ws, job_id, "inbox").values()
        return max(sum(f.endswith(".tar") for f in files) for files in inboxes) > 1

    while not (db.execute(done, [job_id]).fetchone() and queued()):  # mid-job
        assert time.time() < deadline and proc.poll() is None, "never two shards on a node"
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: ansible-playbook too; modules live on
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    # the shards it had sent are withdrawn (the server may still be running one)
    assert _files_left(lab_ws, job_id, "inbox", "outbox") == {"node1": [], "node2": []}
    before = db.execute("SELECT MAX(id) FROM shards WHERE job_id = ?", [job_id]).fetchone()[0]

    started = time.time()
    evc("infer", "resume", job_id, "--json", env=lab_env, check=1)
    took = time.time() - started
    print(f"resume of {job_id} took {took:.1f} s")
    _check_complete(lab_ws, job_id, items)
    assert took < runner.SHARD_TIMEOUT_S / 2, f"the resume took {took:.0f} s"
    resumed = list(db.query("SELECT node, state, error FROM shards WHERE job_id = ? AND id > ?",
                            [job_id, before]))  # fmt: skip
    assert resumed and all(s["state"] == "done" for s in resumed), resumed
    assert not list(db.query("SELECT id FROM shards WHERE job_id = ? AND state = 'running'",
                             [job_id]))  # fmt: skip
    assert _files_left(lab_ws, job_id, "") == {"node1": [], "node2": []}


def test_a_video_becomes_frames(lab_ws, lab_env, deployed, tmp_path):
    import cv2
    import numpy as np
    from skimage import data

    face = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    video = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                            (512, 512))  # fmt: skip
    for _ in range(30):  # 3 s at 10 fps
        video.write(np.ascontiguousarray(face))
    video.release()
    job = _json("infer", "run", f"{MODEL}:1", "--data", tmp_path / "clip.avi", "--fps", "2",
                env=lab_env)  # fmt: skip
    rows = _json("infer", "results", job["id"], env=lab_env)
    assert [r["item"] for r in rows] == [f"clip_{ms:08d}ms.jpg" for ms in range(0, 3000, 500)]
    assert all(r["state"] == "ok" and len(r["detections"]) == 1 for r in rows)


def test_bad_input_is_refused_before_anything_runs(lab_ws, lab_env, deployed, tmp_path):
    before = len(_json("infer", "list", env=lab_env))
    cases = [
        (["--data", tmp_path / "nope"], "does not exist"),
        (["--data", tmp_path], "holds no images"),
        (["--data", tmp_path, "--strategy", "fastest"], "choose one of"),
    ]
    (tmp_path / "bad.zip").write_bytes(b"PK not a zip")
    cases.append((["--data", tmp_path / "bad.zip"], "not a readable zip"))
    for args, message in cases:
        proc = evc("infer", "run", MODEL, *args, env=lab_env, check=2)
        assert message in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "one.png").write_bytes(b"")  # never read: the target check comes first
    proc = evc("infer", "run", f"{MODEL}:1", "--data", tmp_path, "--target", "node3",
               env=lab_env, check=2)  # fmt: skip
    assert "runs on none of the target's nodes (node3)" in proc.stderr
    assert len(_json("infer", "list", env=lab_env)) == before


def test_a_shard_for_a_node_without_the_model_names_the_gone_container(lab_ws, tmp_path):
    """A node re-imaged mid-job has no job folder: the shard's upload fails with a plain
    reason the runner recognises (it gives the node up with the repair), not dd's error."""
    archive = tmp_path / "s.tar"
    with tarfile.open(archive, "w"):
        pass
    run = run_playbook(lab_ws, "infer_shard.yml", "node3", extravars={
        "evc_model": "nomodel", "evc_shard": "x-0-1", "evc_archive": str(archive),
        "evc_jobs_dir": "/var/lib/evc/jobs", "evc_timeout": 30,
    })  # fmt: skip
    host = run.hosts["node3"]
    assert host.state == "failed", host
    assert host.message == (
        "model container evc-model-nomodel is not deployed: its job folder "
        "/var/lib/evc/jobs/models/nomodel is missing"
    )
    assert runner._CONTAINER_GONE.search(host.message)
