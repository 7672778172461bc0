"""Inference jobs with their real threads, queue and database against a fake fleet
(tests/unit/fake_fleet.py): whatever a node answers or the controller runs into, the
job ends and every item ends once, ok or with its reason; a failed shard is re-run on
another node; a late report is dropped; an interrupted job resumes without anything
the interrupted run left on the nodes answering it; one run of a job at a time."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from evc import db as evcdb
from evc import devices
from evc.ansible import HostResult
from evc.errors import Interrupted, UsageError
from evc.infer import jobs, runner
from evc.progress import Progress
from tests.conftest import evc
from tests.unit.fake_fleet import failed, jsonl

ITEMS = [f"img{i:02d}.jpg" for i in range(16)]


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for i, item in enumerate(ITEMS):
        (root / item).write_bytes(b"\xff\xd8 image %d" % i)
    return root


def _options(data, **extra):
    return runner.RunOptions(model="faces:1.0", data=data,
                             **{"target": "node1,node2", "shard_size": 2, **extra})  # fmt: skip


def _in_thread(call, timeout=60):
    """``call()``'s result (or exception), failing the test if it has not ended by then."""
    out = {}

    def target():
        try:
            out["result"] = call()
        except BaseException as exc:  # noqa: B036 - handed to the test thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the job did not end within {timeout} s"
    if "error" in out:
        raise out["error"]
    return out["result"]


def _rows(ws, job_id):
    db = evcdb.workspace_db(ws)
    return {r["item"]: r for r in db.query("SELECT * FROM results WHERE job_id = ?", [job_id])}


def _shards(ws, job_id):
    db = evcdb.workspace_db(ws)
    return list(db.query("SELECT * FROM shards WHERE job_id = ? ORDER BY id", [job_id]))


def _check_every_item_once(ws, job_id, items=ITEMS):
    """Every item has one final row, and an ok item the detections of one answer."""
    rows = _rows(ws, job_id)
    assert sorted(rows) == sorted(items)
    assert all(r["state"] in ("ok", "error") for r in rows.values()), rows
    assert all(r["error"] for r in rows.values() if r["state"] == "error")
    faces = dict(evcdb.workspace_db(ws).execute(
        "SELECT item, COUNT(*) FROM detections WHERE job_id = ? AND label = 'face' "
        "GROUP BY item", [job_id],
    ).fetchall())  # fmt: skip
    assert all(faces.get(i) == 1 for i, r in rows.items() if r["state"] == "ok"), faces
    job = jobs.get(ws, job_id)
    assert job["state"] == "complete"
    assert (job["ok"], job["failed"]) == (
        sum(r["state"] == "ok" for r in rows.values()),
        sum(r["state"] == "error" for r in rows.values()),
    )
    return rows


def test_a_failed_shard_is_rerun_on_another_node(workspace, fleet, data):
    fleet.plant("node1", lambda d: failed(d.node, "model container evc-model-faces is gone"))
    result = _in_thread(lambda: runner.run(workspace, _options(data)))
    assert result.ok
    _check_every_item_once(workspace, result.job["id"])
    shards = _shards(workspace, result.job["id"])
    (bad,) = [s for s in shards if s["state"] != "done"]
    assert (bad["node"], bad["attempt"], bad["state"]) == ("node1", 1, "failed")
    assert "evc-model-faces is gone" in bad["error"]
    (rerun,) = [s for s in shards if s["idx"] == bad["idx"] and s["attempt"] == 2]
    assert (rerun["node"], rerun["state"]) == ("node2", "done")


def _latency(value):
    def answer(d):
        d.lines[0]["latency_ms"] = value
        return jsonl(d.lines)

    return answer


def _no_box(d):
    del d.lines[0]["detections"][0]["box"]
    return jsonl(d.lines)


def _ok_as_text(d):
    d.lines[0]["ok"] = "yes"
    return jsonl(d.lines)


def _raise(d):
    raise RuntimeError("planted bug in the runner")


PLANTS = {
    "malformed JSON": (lambda d: '{"item": "img00.jpg", "ok": tru\n', "Invalid JSON"),
    "a JSON line that is not an object": (lambda d: "[1, 2]\n", "should be an object"),
    "a non-numeric latency": (_latency("fast"), "latency_ms"),
    "an infinite latency": (_latency(float("inf")), "latency_ms"),
    "a detection without a box": (_no_box, "detections.0.box"),
    "ok as text": (_ok_as_text, "ok: Input should be a valid boolean"),
    "an exception in the runner thread": (_raise, "RuntimeError: planted bug in the runner"),
}


@pytest.mark.parametrize("answer, reason", PLANTS.values(), ids=PLANTS)
def test_a_bad_answer_or_an_exception_fails_the_shard_with_its_reason(
    workspace, fleet, data, answer, reason
):
    fleet.plant("node1", answer)
    result = _in_thread(lambda: runner.run(workspace, _options(data)))
    rows = _check_every_item_once(workspace, result.job["id"])
    assert all(r["state"] == "ok" for r in rows.values())  # re-run on node2
    (bad,) = [s for s in _shards(workspace, result.job["id"]) if s["state"] != "done"]
    assert bad["node"] == "node1" and bad["state"] == "failed" and reason in bad["error"]


def test_a_shard_out_of_attempts_records_its_reason_on_each_item(workspace, fleet, data):
    for node in ("node1", "node2"):
        fleet.plant(node, *[_no_box] * 3)
    result = _in_thread(lambda: runner.run(workspace, _options(data, retries=1)))
    rows = _check_every_item_once(workspace, result.job["id"])
    errors = [r["error"] for r in rows.values() if r["state"] == "error"]
    assert errors and all("box" in e for e in errors), "\n".join(errors)
    assert not result.ok


def test_a_device_removed_mid_job_fails_its_shards_not_the_job(workspace, fleet, data):
    def remove_node2(d):
        devices.remove(workspace, "node2")
        return jsonl(d.lines)

    fleet.plant("node2", remove_node2)
    result = _in_thread(lambda: runner.run(workspace, _options(data)))
    rows = _check_every_item_once(workspace, result.job["id"])
    assert all(r["state"] == "ok" for r in rows.values())
    errors = [s["error"] for s in _shards(workspace, result.job["id"]) if s["state"] == "failed"]
    assert errors and all("matches no host" in e for e in errors), errors


def test_a_database_locked_past_the_busy_timeout_fails_shards_not_the_job(
    workspace, fleet, data, monkeypatch
):
    monkeypatch.setattr(evcdb, "BUSY_TIMEOUT_MS", 200)  # the runner threads' connections
    path = workspace.root / "db" / "evc.db"
    locked = threading.Event()

    def hold_the_lock():
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(0.6)  # past the busy timeout
        other.execute("COMMIT")
        other.close()

    def answer_while_locked(d):
        threading.Thread(target=hold_the_lock, daemon=True).start()
        locked.wait(5)
        return jsonl(d.lines)

    fleet.plant("node1", answer_while_locked)
    result = _in_thread(lambda: runner.run(workspace, _options(data, retries=5)))
    rows = _check_every_item_once(workspace, result.job["id"])
    shards = _shards(workspace, result.job["id"])
    assert any("database is locked" in (s["error"] or "") for s in shards), shards
    assert all(s["state"] != "running" for s in shards)
    errors = [r["error"] for r in rows.values() if r["state"] == "error"]
    assert all("database is locked" in e for e in errors), errors


def test_a_late_report_from_a_node_given_up_is_dropped(workspace, fleet, data):
    """node1's first shard is slow; meanwhile node1 turns unreachable, so its shard is
    re-run on node2; node1's answer, when it comes, must not be stored a second time."""

    def slow(d):
        deadline = time.time() + 20
        while not any(set(d.items) <= set(s.items) for s in fleet.served("node2")):
            assert time.time() < deadline, "node2 never re-ran the slow shard"
            time.sleep(0.05)
        return jsonl(d.lines)

    fleet.plant("node1", slow, lambda d: _unreachable(d.node))
    result = _in_thread(lambda: runner.run(workspace, _options(data)))
    _check_every_item_once(workspace, result.job["id"])
    shards = _shards(workspace, result.job["id"])
    late = [s for s in shards if s["error"] == "report came after the node was given up"]
    assert len(late) == 1 and late[0]["node"] == "node1", shards
    node_of = {r["item"]: r["node"] for r in _rows(workspace, result.job["id"]).values()}
    assert {node_of[i] for i in ITEMS[:2]} == {"node2"}


def _unreachable(node):
    return HostResult(node, "unreachable", unreachable=1, message="No route to host")


class _CtrlC(Progress):
    """Presses Ctrl-C (in the job's main loop) once ``when()`` holds."""

    def __init__(self, when):
        self.when = when

    def status(self, text):
        if self.when():
            raise KeyboardInterrupt


class _Log(Progress):
    def __init__(self):
        self.lines = []

    def log(self, message):
        self.lines.append(message)


def _dispatch_names(fleet):
    return [v["evc_shard"] for name, _, v in fleet.calls if name == "infer_shard.yml"]


def test_a_resumed_job_is_not_answered_by_what_the_interrupted_run_left(workspace, fleet, data):
    """Ctrl-C while both nodes run a shard: their modules live on as orphans on the nodes
    (and the cleanup cannot reach them). Every dispatch of the resumed job has a name of
    its own, so no orphan swallows its answer; the resume removes the job's files from
    the nodes before it dispatches."""
    release, held = threading.Event(), []

    def hold(d):  # in flight when Ctrl-C comes: the node's module outlives the controller
        held.append(d.name)
        release.wait(20)
        fleet.orphans.add((d.node, d.name))
        return failed(d.node, "interrupted")

    ok = lambda d: jsonl(d.lines)  # noqa: E731
    for node in ("node1", "node2"):
        fleet.plant(node, ok, hold, hold)
    fleet.cleanup_reaches = False
    options = _options(data, strategy="dynamic")
    with pytest.raises(Interrupted):
        runner.run(workspace, options, _CtrlC(lambda: len(held) >= 2))
    job_id = jobs.list_jobs(workspace)[0]["id"]
    interrupted_at = len(fleet.calls)
    assert fleet.calls[-1][0] == "infer_cleanup.yml"  # on Ctrl-C, best effort
    release.set()
    deadline = time.time() + 10
    while len(fleet.orphans) < len(held):
        assert time.time() < deadline
        time.sleep(0.05)

    before = max(s["id"] for s in _shards(workspace, job_id))
    result = _in_thread(lambda: runner.resume(workspace, job_id))
    assert result.ok
    _check_every_item_once(workspace, job_id)
    resumed = fleet.calls[interrupted_at:]
    cleanup = [i for i, c in enumerate(resumed) if c[0] == "infer_cleanup.yml"]
    first_shard = next(i for i, c in enumerate(resumed) if c[0] == "infer_shard.yml")
    assert cleanup and cleanup[0] < first_shard  # before dispatching
    assert resumed[cleanup[0]][2]["evc_prefix"] == f"{job_id}-"
    names = _dispatch_names(fleet)
    assert len(names) == len(set(names)), names
    later = [s for s in _shards(workspace, job_id) if s["id"] > before]
    assert later and all(s["state"] == "done" for s in later), later
    assert all(s["state"] != "running" for s in _shards(workspace, job_id))


def test_cleanup_withdraws_the_orphans_of_the_job(workspace, fleet, data):
    fleet.orphans |= {("node1", "other-job-1-1-aa")}
    release, held = threading.Event(), []

    def hold(d):
        held.append(d.name)
        release.wait(20)
        fleet.orphans.add((d.node, d.name))
        return failed(d.node, "interrupted")

    fleet.plant("node1", hold)
    fleet.plant("node2", hold)
    with pytest.raises(Interrupted):
        runner.run(workspace, _options(data), _CtrlC(lambda: len(held) >= 2))
    job_id = jobs.list_jobs(workspace)[0]["id"]
    release.set()
    _in_thread(lambda: runner.resume(workspace, job_id))
    assert fleet.orphans == {("node1", "other-job-1-1-aa")}  # only this job's went


def _interrupted_job(ws, data):
    with pytest.raises(Interrupted):
        runner.run(ws, _options(data), _CtrlC(lambda: True))
    return jobs.list_jobs(ws)[0]["id"]


def test_a_second_resume_of_a_running_job_is_refused_naming_the_holder(workspace, fleet, data):
    job_id = _interrupted_job(workspace, data)
    release, held = threading.Event(), []

    def hold(d):
        held.append(d.name)
        release.wait(30)
        return jsonl(d.lines)

    fleet.plant("node1", hold)
    first = threading.Thread(target=runner.resume, args=(workspace, job_id), daemon=True)
    first.start()
    deadline = time.time() + 10
    while not held:
        assert time.time() < deadline
        time.sleep(0.05)
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    proc = evc("infer", "resume", job_id, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"Job {job_id} is already running: {holder}" in proc.stderr
    with pytest.raises(UsageError, match=holder):
        runner.resume(workspace, job_id)
    release.set()
    first.join(30)
    _check_every_item_once(workspace, job_id)


HOLDER = """
import sys, time
from pathlib import Path
from evc.config import Workspace
from evc.infer.jobs import job_lock
with job_lock(Workspace.load(Path(sys.argv[1])), sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_lock_whose_holder_is_gone_is_taken_over(workspace, fleet, data):
    job_id = _interrupted_job(workspace, data)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workspace.root), job_id],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = evc("infer", "resume", job_id, timeout=120)
        assert proc.returncode == 2 and f"pid {holder.pid} on" in proc.stderr, proc.stderr
    finally:
        holder.send_signal(signal.SIGKILL)  # no chance to release it
        holder.wait()
    lock = jobs.job_dir(workspace, job_id) / "lock"
    assert f'"pid": {holder.pid}' in lock.read_text()  # the stale file stays behind
    log = _Log()
    result = _in_thread(lambda: runner.resume(workspace, job_id, progress=log))
    assert result.ok
    assert any(f"from pid {holder.pid} on" in line for line in log.lines), log.lines
    assert lock.read_text() == ""  # released on exit


def test_create_stages_a_pending_job_that_resume_runs(workspace, fleet, data):
    """The HTTP API answers with the job's id before running it: ``create`` stages the
    items (each pending) and holds no lock afterwards; ``resume`` runs it."""
    job_id = runner.create(workspace, _options(data))
    assert jobs.get(workspace, job_id)["started"] is None
    assert {r["state"] for r in _rows(workspace, job_id).values()} == {"pending"}
    assert jobs.holder(workspace, job_id) is None and not fleet.served()
    assert runner.resume(workspace, job_id).ok
    _check_every_item_once(workspace, job_id)


def test_a_stop_event_ends_the_job_like_ctrl_c_and_leaves_it_resumable(workspace, fleet, data):
    """A server's cancel: shards in flight are abandoned and their items stay pending
    (a late answer is not stored), the job is interrupted and resumes to complete. The
    lock names its holder while the job runs, and nobody once it stopped."""
    release = threading.Event()

    def slow(dispatch):
        release.wait(30)
        return jsonl(dispatch.lines)

    for node in ("node1", "node2"):
        fleet.plant(node, slow, slow)
    job_id = runner.create(workspace, _options(data))
    stop = threading.Event()
    holders = []

    def stop_once_running():
        deadline = time.time() + 20
        while time.time() < deadline and not any(
            s["state"] == "running" for s in _shards(workspace, job_id)
        ):
            time.sleep(0.05)
        holders.append(jobs.holder(workspace, job_id))
        stop.set()

    threading.Thread(target=stop_once_running, daemon=True).start()
    with pytest.raises(Interrupted, match="stopped; its pending items stay pending"):
        _in_thread(lambda: runner.resume(workspace, job_id, stop=stop))
    assert holders and holders[0] and f"pid {os.getpid()}" in holders[0]
    assert jobs.holder(workspace, job_id) is None
    release.set()  # the abandoned shards' answers arrive now: too late to be stored
    time.sleep(0.5)
    assert jobs.get(workspace, job_id)["state"] == "interrupted"
    assert {r["state"] for r in _rows(workspace, job_id).values()} == {"pending"}
    assert {s["state"] for s in _shards(workspace, job_id)} == {"interrupted"}
    assert ("infer_cleanup.yml", "node1,node2") in [c[:2] for c in fleet.calls]
    assert runner.resume(workspace, job_id).ok
    _check_every_item_once(workspace, job_id)


@pytest.mark.parametrize("message", [
    "model container evc-model-faces is not running",  # stopped by hand, or crashed
    "model container evc-model-faces is not deployed: its job folder /x is missing",  # re-imaged
])  # fmt: skip
def test_a_node_that_loses_its_container_mid_job_is_given_up_with_the_repair(
    workspace, fleet, data, message
):
    """No retries burnt on it: its shard re-runs elsewhere as the same attempt, and when
    no node is left the items carry the reason and the command that repairs the node."""
    fleet.plant("node1", lambda d: failed(d.node, message))
    result = _in_thread(lambda: runner.run(workspace, _options(data, strategy="round-robin")))
    assert result.ok
    _check_every_item_once(workspace, result.job["id"])
    shards = _shards(workspace, result.job["id"])
    (gone,) = [s for s in shards if s["node"] == "node1" and s["state"] != "done"]
    assert gone["state"] == "lost" and gone["error"].startswith(
        "faces:1.0 is not running on node1: `evc fleet converge node1`"
    )
    assert len([s for s in shards if s["node"] == "node1"]) == 1  # given up at once
    (rerun,) = [s for s in shards if s["idx"] == gone["idx"] and s["state"] == "done"]
    assert (rerun["node"], rerun["attempt"]) == ("node2", gone["attempt"])

    for node in ("node1", "node2"):  # each of a node's runner threads hits it
        fleet.plant(node, *[lambda d: failed(d.node, message)] * runner.RUNNERS_PER_NODE)
    result = _in_thread(lambda: runner.run(workspace, _options(data)))
    rows = _rows(workspace, result.job["id"])
    assert {r["state"] for r in rows.values()} == {"error"}
    assert all("is not running on node" in r["error"] and "evc fleet converge" in r["error"]
               for r in rows.values())  # fmt: skip


def test_a_node_with_a_slow_hand_over_is_measured_and_left_out_of_a_small_paced_job(
    workspace, fleet, data
):
    """node2 answers each shard a second late. Its cost beyond the items' work is
    measured on the shards that found it idle; the next paced job is over before node2's
    hand-over would be: node1 runs it all."""

    def late(dispatch):
        time.sleep(1.0)
        return jsonl(dispatch.lines)

    fleet.plant("node2", *[late] * len(ITEMS))
    first = runner.run(workspace, _options(data, shard_size=4))
    _check_every_item_once(workspace, first.job["id"])
    costs = jobs.shard_costs(workspace, "faces", "1.0")
    assert costs["node2"] > 0.9 and costs["node1"] < 0.5, costs
    assert fleet.served("node2")  # it took shards of the unpaced job
    served = len(fleet.served())
    # node2 first: its runners ask before node1's, so a pacer blind to its hand-over
    # would give it the whole job (one 5 s chunk at its pace is more than 16 items)
    paced = runner.run(workspace, _options(data, shard_size=None, target="node2,node1"))
    rows = _check_every_item_once(workspace, paced.job["id"])
    assert {r["node"] for r in rows.values()} == {"node1"}
    assert {d.node for d in fleet.served()[served:]} == {"node1"}
