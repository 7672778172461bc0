"""Pull-mode inference jobs, controller side, on a real redis-server (TLS, ACLs) with
the job machinery's real threads and database; the nodes are stand-ins
(tests/unit/pull_support.py): real ``streams.Worker`` threads logged in as the device
ACL users, reading their announcement streams.

Planted: a node that dies mid-shard, a redis-server restart mid-job, nodes that stop
answering (the stall bound), the queue not running, a device removed while it holds a
grant. Each job must end with exactly one final row per item.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import redis

from evc import certs, devices, pull_credentials
from evc import db as evcdb
from evc.errors import EVCError, UsageError
from evc.infer import jobs, nodes, pull, runner
from evc.model import deploy
from evc.model.deployments import current
from evc.queue import acl, server
from evc.queue.streams import announce_key, puller_name, work_key
from tests.unit import pull_support as ps
from tests.unit import queue_support as qs
from tests.unit.fake_fleet import FakeFleet, add_model
from tests.unit.test_jobs import _check_every_item_once, _in_thread

NODES = ("node1", "node2", "node4")  # faces:1.0 runs there; each holds a queue user


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace with its queue running, faces:1.0 deployed on NODES (a fake fleet
    answers the deploy and the usable-nodes check) and node5 enrolled but idle."""
    mp = pytest.MonkeyPatch()
    mp.setattr(acl, "device_rule", ps.with_announcements())
    ws = qs.make_workspace(tmp_path_factory.mktemp("pull") / "ws")
    add_model(ws, "1.0", time.time())
    fake = FakeFleet(down={"node3"})
    for module in (deploy, nodes, runner):
        mp.setattr(module, "run_playbook", fake)
    deploy.deploy(ws, deploy.DeployOptions(ref="faces:1.0", target=",".join(NODES)))
    server.up(ws)
    try:
        yield ws
    finally:
        server.down(ws)
        mp.undo()


@pytest.fixture(autouse=True)
def short_lease(monkeypatch):
    monkeypatch.setattr(pull, "LEASE_S", 1.0)


@pytest.fixture
def stand_ins(ws):
    """start(device, **kwargs) -> a running StandIn; all closed after the test."""
    started: list[ps.StandIn] = []

    def start(device: str, **kwargs) -> ps.StandIn:
        started.append(ps.StandIn(ws, device, **kwargs).start())
        return started[-1]

    yield start
    for s in started:
        s.close()


def _data(root, count: int, corrupt: tuple[int, ...] = ()):
    folder = root / "data"
    folder.mkdir()
    items = [f"img{i:03d}.jpg" for i in range(count)]
    for i, item in enumerate(items):
        (folder / item).write_bytes(b"\xff\xd8 corrupt" if i in corrupt else b"\xff\xd8 %d" % i)
    return folder, items


def _options(data, **extra):
    return runner.RunOptions(model="faces:1.0", target=",".join(NODES), data=data, mode="pull",
                             **extra)  # fmt: skip


def _latest(ws) -> str:
    return jobs.list_jobs(ws, 1)[0]["id"]


def _queue_is_clean(ws, job_id: str) -> None:
    """The run's end withdrew its announcements, revoked its grant, deleted its streams."""
    r = server.admin(ws)
    for d in NODES:
        assert all(f[b"job"].decode() != job_id for _, f in r.xrange(announce_key(d)))
    assert job_id not in acl._grants(ws)
    assert not list(r.scan_iter(match=f"evc:job:{job_id}:*"))


def test_every_item_ends_exactly_once_with_its_shard_rows(ws, tmp_path, stand_ins):
    data, items = _data(tmp_path, 60, corrupt=(7,))
    for d, per_item in zip(NODES, (0.004, 0.002, 0.001), strict=True):
        stand_ins(d, per_item=per_item)
    result = _in_thread(lambda: runner.run(ws, _options(data)))
    rows = _check_every_item_once(ws, result.job["id"], items)
    assert rows["img007.jpg"]["error"] == "cannot identify image file"
    assert result.job["mode"] == "pull" and result.to_dict()["mode"] == "pull"
    shards = list(evcdb.workspace_db(ws).query(
        "SELECT * FROM shards WHERE job_id = ?", [result.job["id"]]
    ))  # fmt: skip
    assert {s["state"] for s in shards} == {"done"} and {s["node"] for s in shards} <= set(NODES)
    assert sum(s["items"] for s in shards) == len(items)  # guided: the last shards small
    assert {r["node"] for r in rows.values()} <= set(NODES)
    assert sum(result.nodes[n]["items"] for n in result.nodes) == len(items)
    _queue_is_clean(ws, result.job["id"])


def test_a_node_killed_mid_shard_is_reclaimed_and_each_item_ends_once(ws, tmp_path, stand_ins):
    data, items = _data(tmp_path, 40)
    died = []

    def dies(shard):
        died.append(shard.items)
        raise ps.Died  # its entry stays pending on node1: taken over after the lease

    stand_ins("node1", process=dies)
    time.sleep(0.3)
    others = []

    def late_start():  # once node1 holds a shard
        deadline = time.monotonic() + 10
        while not died and time.monotonic() < deadline:
            time.sleep(0.02)
        others.extend(stand_ins(d, per_item=0.002) for d in ("node2", "node4"))

    threading.Thread(target=late_start, daemon=True).start()
    result = _in_thread(lambda: runner.run(ws, _options(data, shard_size=4)))
    rows = _check_every_item_once(ws, result.job["id"], items)
    assert len(died) == 1 and {rows[i]["node"] for i in died[0]} <= {"node2", "node4"}
    assert {r["state"] for r in rows.values()} == {"ok"}
    reclaimed = sum(w.reclaimed for s in others for w, _, _ in s.workers.values())
    assert reclaimed >= 1
    assert "node1" not in result.nodes  # it never reported
    _queue_is_clean(ws, result.job["id"])


def test_a_bad_line_and_a_poison_shard_end_as_item_errors(ws, tmp_path, stand_ins):
    """Planted: a node's line that is not a valid record (a text latency), an item it
    leaves out of its report, and a shard every node fails (given up after 3
    deliveries): each of those items ends as an error with its reason, the rest ok."""
    data, items = _data(tmp_path, 12)

    def sloppy(shard):
        if "img011.jpg" in shard.items:
            raise RuntimeError("the model server died")  # left pending, reclaimed, again
        lines = ps.answer(shard)
        for line in lines:
            if line["item"] == "img001.jpg":
                line["latency_ms"] = "fast"
        return [line for line in lines if line["item"] != "img002.jpg"]

    for d in NODES:
        stand_ins(d, process=sloppy)
    result = _in_thread(lambda: runner.run(ws, _options(data, shard_size=3)))
    rows = _check_every_item_once(ws, result.job["id"], items)
    assert rows["img001.jpg"]["error"].startswith("unusable result from the node: ")
    assert rows["img002.jpg"]["error"] == "not in the node's report"
    given_up = {i for i, r in rows.items() if r["error"] == "given up after 3 deliveries"}
    assert given_up == {"img009.jpg", "img010.jpg", "img011.jpg"}
    assert {i for i, r in rows.items() if r["state"] == "ok"} == set(items) - given_up - {
        "img001.jpg",
        "img002.jpg",
    }
    _queue_is_clean(ws, result.job["id"])


def test_a_redis_restart_mid_job_loses_nothing(ws, tmp_path, stand_ins):
    data, items = _data(tmp_path, 48)
    for d in NODES:
        stand_ins(d, per_item=0.03)
    out = {}
    known = {j["id"] for j in jobs.list_jobs(ws, 1000)}
    thread = threading.Thread(
        target=lambda: out.setdefault("result", runner.run(ws, _options(data, shard_size=3))),
        daemon=True,
    )
    thread.start()
    db = evcdb.workspace_db(ws)
    deadline, done = time.monotonic() + 20, 0
    while time.monotonic() < deadline and done < 6:  # this job's, once it runs
        new = [j["id"] for j in jobs.list_jobs(ws, 1000) if j["id"] not in known]
        done = db.execute(
            "SELECT COUNT(*) FROM results WHERE state = 'ok' AND job_id = ?", new[:1] or [""]
        ).fetchone()[0]
        time.sleep(0.02)
    assert 6 <= done < len(items)  # mid-job
    before = server.status(ws).pid
    assert server.down(ws).stopped
    assert server.up(ws).pid != before
    thread.join(60)
    assert not thread.is_alive()
    rows = _check_every_item_once(ws, out["result"].job["id"], items)
    assert {r["state"] for r in rows.values()} == {"ok"}
    _queue_is_clean(ws, out["result"].job["id"])


def test_a_stall_stops_the_job_resumably_and_resume_sends_only_the_pending(
    ws, tmp_path, stand_ins, monkeypatch
):
    monkeypatch.setattr(pull, "STALL_S", 2.0)
    data, items = _data(tmp_path, 24)
    release = threading.Event()
    seen: list[str] = []

    def two_then_hang(shard):  # answers two shards, then hangs (its lease kept alive)
        if len(seen) >= 6:
            release.wait(30)
            raise RuntimeError("gave up")
        seen.extend(shard.items)
        return ps.answer(shard)

    stand_ins("node1", process=two_then_hang)
    with pytest.raises(EVCError, match="no node reported for 2 s.*evc infer resume"):
        _in_thread(lambda: runner.run(ws, _options(data, shard_size=3)))
    release.set()
    job_id = _latest(ws)
    job = jobs.get(ws, job_id)
    assert job["state"] == "interrupted"
    db = evcdb.workspace_db(ws)
    states = dict(db.execute("SELECT item, state FROM results WHERE job_id = ?", [job_id]))
    assert sorted(i for i, s in states.items() if s == "ok") == sorted(seen)
    pending = sorted(i for i, s in states.items() if s == "pending")
    assert len(pending) == len(items) - 6
    _queue_is_clean(ws, job_id)
    resumed: list[str] = []

    def record(shard):
        resumed.extend(shard.items)
        return ps.answer(shard)

    for d in ("node2", "node4"):
        stand_ins(d, process=record)
    result = _in_thread(lambda: runner.resume(ws, job_id))
    assert sorted(resumed) == pending  # only what was pending was sent
    rows = _check_every_item_once(ws, job_id, items)
    assert {r["state"] for r in rows.values()} == {"ok"}
    assert result.job["state"] == "complete"


def test_a_stop_event_interrupts_like_ctrl_c(ws, tmp_path, stand_ins):
    data, items = _data(tmp_path, 30)
    stand_ins("node2", per_item=0.05)
    stop = threading.Event()
    threading.Timer(0.8, stop.set).start()
    from evc.errors import Interrupted

    with pytest.raises(Interrupted, match="evc infer resume"):
        _in_thread(lambda: runner.run(ws, _options(data, shard_size=2), stop=stop))
    job_id = _latest(ws)
    assert jobs.get(ws, job_id)["state"] == "interrupted"
    _queue_is_clean(ws, job_id)
    stand_ins("node4", per_item=0.0)
    _in_thread(lambda: runner.resume(ws, job_id))
    _check_every_item_once(ws, job_id, items)


def test_pullers_naming_what_they_serve_spare_the_fleet_status_run(ws, monkeypatch):
    """A node whose connected puller names this version, its recorded image and an
    answering server is usable from the queue's CLIENT LIST alone; the others (silent
    server, another image, no puller of its own: a node cannot vouch for another) get one
    fleet_status.yml run, on them only."""
    image = {r["node"]: r["image"] for r in current(ws, "faces")}
    named = []

    def connect(device: str, name: str):
        named.append(qs.device(ws, device))
        assert named[-1].client_setname(name)

    fake = FakeFleet()
    monkeypatch.setattr(nodes, "run_playbook", fake)
    try:
        connect("node1", puller_name("faces", "1.0", image["node1"], ready=True))
        connect("node1", puller_name("faces", "1.0", image["node2"], ready=True))
        connect("node2", puller_name("faces", "1.0", image["node2"], ready=False))
        connect("node4", puller_name("faces", "1.0", image["node4"] + "0", ready=True))
        usable, skipped = nodes.usable_nodes(ws, "faces", "1.0", list(NODES), pull=True)
        assert usable == list(NODES) and not skipped  # the fake fleet serves the others
        assert [(c[0], c[1]) for c in fake.calls] == [("fleet_status.yml", "node2,node4")]
        connect("node2", puller_name("faces", "1.0", image["node2"], ready=True))
        connect("node4", puller_name("faces", "1.0", image["node4"], ready=True))
        usable = nodes.usable_nodes(ws, "faces", "1.0", list(NODES), pull=True)
        assert usable == (list(NODES), {}) and len(fake.calls) == 1  # no run at all
        assert nodes.usable_nodes(ws, "faces", "1.0", list(NODES))[0] == list(NODES)
        assert len(fake.calls) == 2  # push mode needs the model containers: it looks
    finally:  # the other tests' nodes are looked at
        for r in named:
            r.close()


def test_pull_mode_needs_the_queue_running(ws, tmp_path):
    data, _ = _data(tmp_path, 3)
    known = len(jobs.list_jobs(ws, 1000))
    server.down(ws)
    try:
        with pytest.raises(UsageError, match="evc queue up"):
            runner.run(ws, _options(data))
    finally:
        server.up(ws)
    assert len(jobs.list_jobs(ws, 1000)) == known  # refused before a job was made
    with pytest.raises(ValueError, match="not a mode"):
        runner.RunOptions(model="faces:1.0", data=data, mode="poll")


def test_controller_cpu_per_item(ws, tmp_path):
    """Reported, not asserted: the stand-ins run in another process, so this process's
    CPU time is the controller's (staging, the usable-nodes check, dispatch, ingest)."""
    count = 480
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(count):
        (folder / f"{i:04d}.jpg").write_bytes(bytes([i % 256]) * 20_000)
    args = [f"{d}={s}" for d, s in zip(NODES, (0.004, 0.002, 0.001), strict=True)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.pull_support", str(ws.root), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert json.loads(proc.stdout.readline())["ready"] == list(NODES)
        cpu, wall = time.process_time(), time.monotonic()
        result = _in_thread(lambda: runner.run(ws, _options(folder)), timeout=120)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    finally:
        proc.stdin.close()
        proc.wait(20)
    assert result.job["ok"] == count
    print(f"\npull mode, {count} items on {len(NODES)} stand-ins: controller CPU "
          f"{cpu:.2f} s = {1000 * cpu / count:.2f} ms per item; wall {wall:.1f} s")  # fmt: skip


@pytest.mark.parametrize("how", ["cert revoke", "device remove"])
def test_a_revoked_device_reads_nothing(ws, how, monkeypatch):
    """Planted: node5 holds a grant and reads its announcements; revoking its credential
    (`evc cert revoke`) or removing the device, the queue running, deletes its Redis
    user at once: its open connection is cut and its password refused. Fails without
    the sync in certs.revoke / devices.remove."""
    if how == "device remove":
        pull_credentials.issue(ws, ["node5"])  # again, after the cert revoke case
        server.sync_acl(ws)
    job = "20990101-000000-dead"
    acl.grant(ws, job, ["node5"])
    server.sync_acl(ws)
    r = server.admin(ws)
    r.xadd(announce_key("node5"), {"job": job, "model": "faces", "version": "1.0",
                               "params": "{}", "lease": "1.0"})  # fmt: skip
    node5 = qs.device(ws, "node5", retries=0)
    assert node5.xrange(announce_key("node5"))  # it could read
    password = node5.connection_pool.connection_kwargs["password"]
    try:
        if how == "cert revoke":
            monkeypatch.setattr(certs, "run_playbook", FakeFleet())
            certs.revoke(ws, certs.RevokeOptions(target="node5"))
        else:
            devices.remove(ws, "node5")
        with pytest.raises(redis.RedisError):
            node5.xrange(announce_key("node5"))
        again = server.client(ws, "node5", password, retries=0)
        with pytest.raises(redis.AuthenticationError):
            again.xreadgroup("workers", "node5", {work_key(job): ">"}, count=1)
    finally:
        acl.grant(ws, job, [])
        r.delete(announce_key("node5"))


def test_withdrawing_a_killed_runs_announcements_touches_only_its_nodes(ws):
    """A run killed outright leaves its announcements; the next run's withdraw removes
    them from the nodes it had announced to, and reads no other node's stream (it was a
    SCAN of every node's announcements, twice a job: O(fleet) at 10,000 devices)."""
    r = server.admin(ws)
    job = {"id": "20990101-000000-kill", "model": "faces", "version": "1.0",
           "params": json.dumps({"conf": 0.25})}  # fmt: skip
    other = {**job, "id": "20990101-000000-live"}
    pull.announce(r, job, ["node1", "node2"])
    pull.announce(r, other, ["node1", "node4"])
    r.config_resetstat()
    try:
        assert pull.withdraw(r, job["id"]) == 2
        stats = r.info("commandstats")
        assert "cmdstat_scan" not in stats and stats["cmdstat_xrange"]["calls"] == 2
        left = {d: [f[b"job"].decode() for _, f in r.xrange(announce_key(d))]
                for d in ("node1", "node2", "node4")}  # fmt: skip
        assert left == {"node1": [other["id"]], "node2": [], "node4": [other["id"]]}
        assert not r.exists(f"evc:job:{job['id']}:announced")
        assert pull.withdraw(r, job["id"]) == 0  # nothing left, nothing to read
    finally:
        pull.withdraw(r, other["id"])
