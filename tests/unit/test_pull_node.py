"""`evc-infer --pull`, the node's pull-mode worker, run for real as a subprocess against a
real redis-server (TLS, ACLs) as its device's ACL user, with the image's package as the
build assembles it (model_images/common/evc_infer + evc.queue.streams).

Proven: an announced job's shards go through a real model server (`--serve`) and come
back as Record-valid dicts, a shard the server refuses (.error) as an error per item, a
job of another model is left alone, a job whose announcement is gone is dropped. Planted:
a puller killed mid-shard (another node's reclaims the shard after the lease), a model
server that falls silent (the shard is given back, not reported).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from evc import pull_credentials, registry
from evc.infer.shards import Record
from evc.model.build import infer_package
from evc.queue import acl, server
from evc.queue.streams import (
    GROUP,
    Dispatcher,
    Shard,
    announce_key,
    puller_name,
    results_key,
    work_key,
)
from tests.unit import queue_support as qs
from tests.unit.model_support import make_home

PARAMS = json.dumps({"conf": None, "iou": None, "imgsz": None})
IMAGE = "10.0.0.1:5001/evc/faces@sha256:" + "ab" * 32  # what the deploy playbook sets


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    with qs.running(tmp_path_factory.mktemp("pull") / "ws") as ws:
        yield ws


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The image's evc_infer, as the build context holds it."""
    root = tmp_path_factory.mktemp("image-lib")
    infer_package(root / "evc_infer")
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    pytest.importorskip("cv2")
    return make_home(tmp_path_factory.mktemp("home") / "home", "face-haar")


@pytest.fixture(scope="module")
def face() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")
    return buf.getvalue()


def queue_dir(ws, device: str, root: Path) -> Path:
    """What cert_push.yml writes on the node."""
    nonce = pull_credentials.nonces(ws, [device])[device]
    host, port = server.address(ws)
    password = acl.device_password(pull_credentials.key(ws), device, nonce)
    root.mkdir(parents=True)
    settings = {"host": host, "port": port, "user": device, "password": password}
    (root / "queue.json").write_text(json.dumps(settings))
    shutil.copy(registry.files(ws).ca_cert, root / "ca.crt")
    return root


def start(package: Path, args: list, model: str = "faces") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(package), "EVC_MODEL_NAME": model}
    env["EVC_MODEL_VERSION"], env["EVC_MODEL_IMAGE"] = "1", IMAGE
    env.pop("EVC_HOME_DIR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "evc_infer", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return out + err


def puller(package, home, jobs: Path, qdir: Path, *extra) -> subprocess.Popen:
    return start(package, ["--pull", jobs, "--queue", qdir, "--home", home, *extra])


def announce(ws, job: str, devices, model: str = "faces", lease: float = 1.0) -> dict:
    """What the controller does when a pull job starts: grant, announce; entry ids."""
    acl.grant(ws, job, devices)
    server.sync_acl(ws)
    r = server.admin(ws)
    fields = {"job": job, "model": model, "version": "1", "params": PARAMS, "lease": str(lease)}
    return {d: r.xadd(announce_key(d), fields) for d in devices}


def withdraw(ws, job: str, entries: dict) -> None:
    r = server.admin(ws)
    for device, entry in entries.items():
        r.xdel(announce_key(device), entry)
    acl.grant(ws, job, [])
    server.sync_acl(ws)


def record(result: dict) -> Record:
    """A reported dict as the controller checks a results.jsonl line (strict, from JSON)."""
    return Record.model_validate_json(json.dumps(result))


def dispatch(ws, job: str, devices, shards: list[Shard], seconds: float = 90) -> dict:
    """The controller's Dispatcher over ``shards``; item -> (device, result)."""
    got = {}

    def ingest(device, shard, results):
        for result in results:
            got.setdefault(result["item"], (device, result))

    d = Dispatcher(server.admin(ws), job, devices, ingest, window=2)
    stats = d.run(shards, deadline=time.monotonic() + seconds)
    d.cleanup()
    assert stats.complete, stats
    return got


def test_an_announced_jobs_shards_are_run_by_the_model_server_and_reported(
    ws, package, home, face, tmp_path
):
    jobs = tmp_path / "jobs"
    serve = start(package, ["--serve", jobs, "--home", home])
    pull = puller(package, home, jobs, queue_dir(ws, "node1", tmp_path / "q"))
    other = announce(ws, "j-other", ["node1"], model="cars")
    entries = announce(ws, "j-faces", ["node1"])
    try:
        got = dispatch(ws, "j-faces", ["node1"], [
            Shard(0, ["a/astronaut.png", "corrupt.jpg"], [face, b"\x00not an image" * 50]),
            Shard(1, ["../escape.jpg"], [face]),  # the server refuses it: .error
            Shard(2, ["b.png"], [face]),
        ])  # fmt: skip
        assert set(got) == {"a/astronaut.png", "corrupt.jpg", "../escape.jpg", "b.png"}
        assert {device for device, _ in got.values()} == {"node1"}
        records = {item: record(r) for item, (_, r) in got.items()}
        assert records["a/astronaut.png"].ok and len(records["a/astronaut.png"].detections) == 1
        assert records["b.png"].ok and not records["corrupt.jpg"].ok
        escape = got["../escape.jpg"][1]
        assert escape["ok"] is False and "unsafe path" in escape["error"]
        # The other model's job: nobody read its work stream.
        r = server.admin(ws)
        r.xgroup_create(work_key("j-other"), GROUP, id="0", mkstream=True)
        r.xadd(work_key("j-other"), Shard(0, ["x.png"], [face]).encode())
        time.sleep(2)
        assert r.xpending(work_key("j-other"), GROUP)["pending"] == 0
        withdraw(ws, "j-faces", entries)
        time.sleep(2)  # the puller reads its announcements every second
    finally:
        log = stop(pull)
        stop(serve)
        withdraw(ws, "j-other", other)
        server.admin(ws).delete(work_key("j-other"))
    assert "working on job j-faces" in log and "job j-faces is over" in log
    assert "j-other" not in log
    assert not [p for p in (jobs / "inbox").iterdir()] and not any((jobs / "outbox").iterdir())


class StandIn:
    """A model server in small: touches serve.alive while ``alive``; answers each shard
    with one ok line per item while ``answers``, else holds it."""

    def __init__(self, jobs: Path):
        self.jobs, self.alive, self.answers = jobs, True, True
        for folder in ("inbox", "outbox"):
            (jobs / folder).mkdir(parents=True)
        self.held: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.wait(0.05):
            if self.alive:
                (self.jobs / "serve.alive").touch()
            for archive in (self.jobs / "inbox").glob("[!.]*.tar"):
                if archive.name not in self.held:
                    self.held.append(archive.name)
                if not self.answers:
                    continue
                with tarfile.open(archive) as tar:
                    items = sorted(m.name for m in tar if m.name != "shard.json")
                lines = "".join(
                    json.dumps({"item": i, "ok": True, "error": None, "detections": []}) + "\n"
                    for i in items
                )
                archive.unlink()
                answer = self.jobs / "outbox" / f"{archive.stem}.jsonl"
                answer.with_name(".part").write_text(lines)
                answer.with_name(".part").rename(answer)

    def close(self):
        self._stop.set()
        self._thread.join()


def _wait(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_killed_pullers_shard_is_reclaimed_by_another_node_after_the_lease(
    ws, package, home, tmp_path
):
    slow, fast = StandIn(tmp_path / "jobs1"), StandIn(tmp_path / "jobs2")
    slow.answers = False  # node1 takes the shard and holds it
    node1 = puller(package, home, tmp_path / "jobs1", queue_dir(ws, "node1", tmp_path / "q1"))
    entries = announce(ws, "j-kill", ["node1", "node2"], lease=1.0)
    node2 = None
    got: dict = {}
    done = threading.Thread(
        target=lambda: got.update(
            dispatch(
                ws,
                "j-kill",
                ["node1", "node2"],
                [
                    Shard(0, ["a.png", "b.png"], [b"a", b"b"]),
                ],
            )
        ),  # fmt: skip
        daemon=True,
    )
    try:
        done.start()
        _wait(lambda: slow.held)  # node1's puller handed it to its server
        time.sleep(2.5)  # past the lease: node1's lease thread keeps extending it
        pending = server.admin(ws).xpending_range(work_key("j-kill"), GROUP, "-", "+", 10)
        assert [p["consumer"] for p in pending] == [b"node1"]
        node1.kill()  # mid-shard: no clean-up, no report
        node1.wait()
        node2 = puller(package, home, tmp_path / "jobs2", queue_dir(ws, "node2", tmp_path / "q2"))
        done.join(60)
        assert not done.is_alive()
    finally:
        if node1.poll() is None:
            node1.kill()
        log = stop(node2) if node2 else ""
        withdraw(ws, "j-kill", entries)
        slow.close()
        fast.close()
    assert {item: device for item, (device, _) in got.items()} == {
        "a.png": "node2",
        "b.png": "node2",
    }
    assert all(record(r).ok for _, r in got.values())
    assert "working on job j-kill" in log


def test_a_silent_model_server_gives_the_shard_back_and_takes_no_more(ws, package, home, tmp_path):
    stand_in = StandIn(tmp_path / "jobs")
    stand_in.answers = False
    node5 = puller(
        package, home, tmp_path / "jobs", queue_dir(ws, "node5", tmp_path / "q"),
        "--stale-after", "1",
    )  # fmt: skip
    entries = announce(ws, "j-silent", ["node5"], lease=60.0)
    r = server.admin(ws)
    r.xgroup_create(work_key("j-silent"), GROUP, id="0", mkstream=True)

    def named(ready: bool) -> bool:  # what the controller's usable-nodes check reads
        name = puller_name("faces", "1", IMAGE, ready=ready)
        return [c["name"] for c in r.client_list() if c["user"] == "node5"] == [name]

    try:
        _wait(lambda: named(ready=True))
        for i in range(2):
            r.xadd(work_key("j-silent"), Shard(i, [f"{i}.png"], [b"x"]).encode())
        _wait(lambda: stand_in.held)
        stand_in.alive = False  # the model server died mid-shard
        _wait(lambda: not list((tmp_path / "jobs" / "inbox").glob("*.tar")))  # given back
        _wait(lambda: named(ready=False))
        time.sleep(2)
        pending = r.xpending_range(work_key("j-silent"), GROUP, "-", "+", 10)
        assert len(pending) == 1 and r.xlen(work_key("j-silent")) == 2  # one taken, unacked
        assert r.xlen(results_key("j-silent", "node5")) == 0  # nothing reported
    finally:
        log = stop(node5)
        withdraw(ws, "j-silent", entries)
        r.delete(work_key("j-silent"), results_key("j-silent", "node5"))
        stand_in.close()
    assert "left for another node: the model server has not answered" in log
    assert "the model server has been silent" in log
    assert len(stand_in.held) == 1  # the second shard was never taken


def test_bad_invocations_say_what_is_wrong(package, home, tmp_path):
    queue = tmp_path / "q"
    queue.mkdir()
    cases = [
        (["--pull", tmp_path], "faces", "--pull DIR needs --queue DIR"),
        (["--pull", tmp_path, "--queue", queue, "--serve", tmp_path], "faces", "no other mode"),
        (["--pull", tmp_path, "--queue", queue, "--home", home], "faces", "queue.json"),
        (["--pull", tmp_path, "--queue", queue, "--home", home], "", "EVC_MODEL_NAME"),
    ]
    for args, model, message in cases:
        proc = start(package, args, model=model)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and message in err and "Traceback" not in err, err
    (queue / "queue.json").write_text(json.dumps({"host": "h", "port": "1", "user": "u"}))
    proc = start(package, ["--pull", tmp_path, "--queue", queue, "--home", home])
    assert "expected an object of host, port, user, password" in proc.communicate(timeout=60)[1]
