"""`evc serve` as a real process on loopback, with the fake fleet standing in for the
nodes (tests/unit/api_support.py): tokens and roles, bounded input, jobs submitted by
upload and followed on the event stream to the end, results and their images, cancel,
a restart mid-job, run-configs, event latency, TLS. The lab tests do the same against
real nodes (tests/lab/test_api_lab.py)."""

from __future__ import annotations

import io
import json
import os
import threading
import time

import httpx
import pytest

from evc import db as evcdb
from evc import pki, registry
from tests.conftest import evc
from tests.unit import api_support as api

MODEL = {"model": "faces:1.0", "target": "node1,node2"}


def _images(n: int, prefix: str = "img") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{prefix}{i:02d}.jpg", b"\xff\xd8 image %d" % i, "image/jpeg"))
            for i in range(n)]  # fmt: skip


def _upload(client: httpx.Client, files, wait: float = 0, **options) -> httpx.Response:
    return client.post(
        "/api/jobs/upload",
        params={"wait": wait},
        data={"options": json.dumps({**MODEL, **options})},
        files=files,
    )


class Collector:
    """Events of a stream gathered on a thread until ``done(type, data)`` says so."""

    def __init__(self, server, done, timeout=60, **params):
        self.events: list[tuple[str, dict, float]] = []
        self.ready = threading.Event()
        self.error: BaseException | None = None

        def listen():
            try:
                for kind, data in server.events(timeout=timeout, **params):
                    self.events.append((kind, data, time.monotonic()))
                    if kind == "hello":
                        self.ready.set()
                    if done(kind, data):
                        return
            except BaseException as exc:  # noqa: B036 - reported to the test thread
                self.error = exc
                self.ready.set()

        self.thread = threading.Thread(target=listen, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), "no hello event"

    def wait(self, timeout=90):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the awaited event never came: {self.events[-5:]}"
        if self.error:
            raise self.error
        return self.events


def _job_done(job_id_box, state="complete"):
    return lambda kind, data: kind == "job" and data["id"] in job_id_box and data["state"] == state


@pytest.fixture
def shared(tmp_path):
    """A --data-root folder with a data set, and a file outside it."""
    root = tmp_path / "shared"
    (root / "set").mkdir(parents=True)
    for i in range(4):
        (root / "set" / f"pic{i}.jpg").write_bytes(b"\xff\xd8 pic %d" % i)
    (tmp_path / "secret.txt").write_text("controller secret")
    (root / "set" / "escape.jpg").symlink_to(tmp_path / "secret.txt")
    (root / "out").symlink_to(tmp_path)
    return root


@pytest.fixture
def server(workspace, fleet, shared):
    with api.running(workspace, "--data-root", str(shared)) as s:
        yield s


def test_no_token_bad_token_wrong_role_and_revoked_token_are_refused(server, workspace):
    with server.client(None) as anon:
        r = anon.get("/api/devices")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert anon.get("/api/devices", headers={"Authorization": "Basic eDp5"}).status_code == 401
        bad = {"Authorization": "Bearer evc_" + "A" * 43}
        assert anon.get("/api/devices", headers=bad).status_code == 401
        assert anon.get("/api/health").json()["ok"] is True  # health needs no token
    deploy = {"ref": "faces:1.0", "target": "node1"}
    with server.client("viewer") as viewer:
        assert viewer.get("/api/devices").json()["total"] == 3
        r = viewer.post("/api/deployments/deploy", json=deploy)
        assert r.status_code == 403 and "operator role" in r.json()["detail"]
        assert viewer.get("/api/tokens").status_code == 403
    with server.client("operator") as operator:
        r = operator.post("/api/deployments/deploy", params={"wait": 30}, json=deploy)
        assert r.status_code == 202 and r.json()["action"]["state"] == "ok", r.json()
        assert operator.post("/api/tokens", json={"name": "x"}).status_code == 403
    with server.client("admin") as admin:
        made = admin.post("/api/tokens", json={"name": "ci", "role": "viewer"})
        assert made.status_code == 201 and made.json()["token"].startswith("evc_")
        listed = admin.get("/api/tokens").json()["items"]
        assert "ci" in {t["name"] for t in listed}
        assert made.json()["token"] not in json.dumps(listed)
    ci = {"Authorization": f"Bearer {made.json()['token']}"}
    with server.client(None) as anon:
        assert anon.get("/api/me", headers=ci).json() == {
            "name": "ci", "role": "viewer", "anonymous": False}  # fmt: skip
        evc("token", "revoke", "ci", env={"EVC_HOME": str(workspace.root)}, check=0)
        assert anon.get("/api/me", headers=ci).status_code == 401  # from the next request
    rows = list(evcdb.workspace_db(workspace).query(
        "SELECT user, command, args, exit_code FROM audit_log WHERE command LIKE 'api %' "
        "ORDER BY id"))  # fmt: skip
    seen = {(r["user"], r["command"], r["exit_code"]) for r in rows}
    assert ("token:t-viewer", "api POST /api/deployments/deploy", 403) in seen
    assert ("token:t-operator", "api POST /api/deployments/deploy", 202) in seen
    assert ("token:t-admin", "api POST /api/tokens", 201) in seen
    assert ["/api/deployments/deploy", "ref=faces:1.0", "target=node1"] in [
        json.loads(r["args"])[:3] for r in rows
    ]
    assert not any(made.json()["token"] in r["args"] for r in rows)


def test_answers_carry_security_headers_and_bodies_are_bounded(server):
    with server.client("admin") as c:
        page = c.get("/")
        csp = page.headers["content-security-policy"]
        assert page.status_code == 200 and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp
        r = c.get("/api/devices")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"
        assert "sandbox" in r.headers["content-security-policy"]
        schema = c.get("/api/openapi.json").json()
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert c.get("/api/docs").status_code in (401, 404)  # no CDN-loaded Swagger UI
        big = {"ref": "faces:1.0", "target": "node1", "memory": "x" * (2 << 20)}
        assert c.post("/api/deployments/deploy", json=big).status_code == 413

        def chunks():
            yield b'{"ref": "faces:1.0",'
            yield b' "target": "node1"}'

        r = c.post("/api/deployments/deploy", content=chunks(),
                   headers={"content-type": "application/json"})  # fmt: skip
        assert r.status_code == 411


def test_lists_are_paged_filtered_and_bounded(server):
    with server.client("viewer") as c:
        assert c.get("/api/devices", params={"limit": 501}).status_code == 422
        assert c.get("/api/devices", params={"offset": -1}).status_code == 422
        page = c.get("/api/devices", params={"limit": 2}).json()
        assert (page["total"], [d["name"] for d in page["items"]]) == (3, ["node1", "node2"])
        assert set(page["items"][0]["groups"]) == {"cam", "edge"}
        assert c.get("/api/devices", params={"offset": 2}).json()["items"][0]["name"] == "node3"
        assert c.get("/api/devices", params={"status": "offline"}).json()["total"] == 1
        assert c.get("/api/devices", params={"group": "edge"}).json()["total"] == 2
        assert c.get("/api/devices", params={"q": "node2"}).json()["total"] == 1
        assert c.get("/api/devices", params={"q": "10.0.0.1"}).json()["total"] == 3
        assert c.get("/api/devices", params={"status": "bogus"}).status_code == 422
        assert c.get("/api/devices/summary").json()["status"] == {"online": 2, "offline": 1}
        assert len(c.get("/api/devices/map").json()["points"]) == 2
        node1 = c.get("/api/devices/node1").json()
        assert node1["name"] == "node1" and node1["deployments"][0]["model"] == "faces"
        assert c.get("/api/devices/nope").status_code == 404
        models = c.get("/api/models").json()["items"]
        assert models[0]["ref"] == "faces:1.0" and models[0]["deployed_on"] == ["node1", "node2"]
        assert c.get("/api/deployments").json()["items"][0]["model"] == "faces"
        assert c.get("/api/deployments/history", params={"limit": 1}).json()["total"] == 2
        series = c.get("/api/telemetry/series", params={"node": ["node1"]}).json()
        assert series["series"] == {}  # no samples yet: no series, no error
        r = c.get("/api/telemetry/series", params={"node": ["node1"], "metric": ["x;drop"]})
        assert r.status_code == 400


def test_an_uploaded_job_runs_to_the_end_on_the_event_stream(workspace, fleet):
    with api.running(workspace, env={"EVC_FAKE_SHARD_S": "0.5"}) as server:
        _follow_an_uploaded_job(server, workspace)


def _follow_an_uploaded_job(server, workspace):
    box: list[str] = []
    listener = Collector(server, _job_done(box), types="job")
    with server.client("operator") as c:
        files = _images(12) + [("files", ("corrupt.jpg", b"not an image", "image/jpeg"))]
        r = _upload(c, files, shard_size=2)
        assert r.status_code == 202, r.text
        box.append(r.json()["job"])
    seen = [d for k, d, _ in listener.wait() if k == "job" and d["id"] == box[0]]
    done = [d["done"] for d in seen]
    assert done == sorted(done) and done[-1] == 13 and seen[-1]["percent"] == 100.0
    assert len(seen) >= 3, "progress came as the shards ended, not only at the end"
    assert set(seen[-1]["nodes"]) == {"node1", "node2"}
    with server.client("viewer") as c:
        job = c.get(f"/api/jobs/{box[0]}").json()
        assert (job["state"], job["ok"], job["failed"]) == ("complete", 12, 1)
        assert job["errors"] == [{"item": "corrupt.jpg", "node": job["errors"][0]["node"],
                                  "error": "cannot identify image file"}]  # fmt: skip
        page = c.get(f"/api/jobs/{box[0]}/results", params={"limit": 5}).json()
        assert page["total"] == 13 and len(page["items"]) == 5
        assert page["items"][0]["item"] == "corrupt.jpg" and not page["items"][0]["detections"]
        assert page["items"][1]["detections"][0]["label"] == "face"
        people = c.get(f"/api/jobs/{box[0]}/results", params={"label": "person"}).json()
        assert people["total"] == 6
        assert {d["label"] for i in people["items"] for d in i["detections"]} == {"person"}
        sure = c.get(f"/api/jobs/{box[0]}/results", params={"min_score": 0.9}).json()
        assert sure["total"] == 12 and {d["score"] for i in sure["items"]
                                        for d in i["detections"]} == {0.91}  # fmt: skip
        labels = {
            x["label"]: x["items"] for x in c.get(f"/api/jobs/{box[0]}/labels").json()["items"]
        }
        assert labels == {"face": 12, "person": 6}
        image = c.get(f"/api/jobs/{box[0]}/image", params={"item": "img03.jpg"})
        assert image.content == b"\xff\xd8 image 3"
        assert image.headers["content-type"] == "image/jpeg"
        for bad in ("../../../evc.yaml", "/etc/passwd", "img03.jpg/..", "nope.jpg"):
            r = c.get(f"/api/jobs/{box[0]}/image", params={"item": bad})
            assert r.status_code == 404, bad
        assert c.get("/api/jobs/nope/results").status_code == 404
    assert list((workspace.root / ".evc" / "uploads").iterdir())  # the images are the job's data


def test_a_server_folder_must_be_under_a_data_root_and_links_out_are_not_served(
    server, shared, tmp_path
):
    with server.client("operator") as c:
        for data in ("/etc", str(shared / ".." / "secret.txt"), "out", "out/secret.txt", "nope"):
            r = c.post("/api/jobs", json={**MODEL, "data": data})
            assert r.status_code == 403, (data, r.text)
        r = c.post("/api/jobs", params={"wait": 30}, json={**MODEL, "data": "set"})
        assert r.status_code == 202 and r.json()["action"]["state"] == "failed"  # escape.jpg
        job = c.get(f"/api/jobs/{r.json()['job']}").json()
        assert job["ok"] == 4 and job["errors"][0]["item"] == "escape.jpg"
        assert "outside the data folder" in job["errors"][0]["error"]
        image = c.get(f"/api/jobs/{job['id']}/image", params={"item": "escape.jpg"})
        assert image.status_code == 404 and "controller secret" not in image.text
        assert c.get(f"/api/jobs/{job['id']}/image", params={"item": "pic1.jpg"}).is_success


def test_uploads_are_capped_while_they_stream_and_bad_ones_leave_nothing(workspace, fleet):
    uploads = workspace.root / ".evc" / "uploads"
    with api.running(workspace, "--max-upload", "1m") as server, server.client("operator") as c:
        big = [("files", ("big.jpg", b"\xff" * (2 << 20), "image/jpeg"))]
        assert _upload(c, big).status_code == 413  # Content-Length says so up front
        body = io.BytesIO()
        request = c.build_request("POST", "/api/jobs/upload", files=big,
                                  data={"options": json.dumps(MODEL)})  # fmt: skip
        body.write(request.read())

        def stream():  # no Content-Length: counted as it arrives
            data = body.getvalue()
            for i in range(0, len(data), 65536):
                yield data[i : i + 65536]

        r = c.post("/api/jobs/upload", content=stream(),
                   headers={"content-type": request.headers["content-type"]})  # fmt: skip
        assert r.status_code == 413, r.text
        cases = [
            (_images(1, "../up"), {}, 400),
            (_images(1) + _images(1), {}, 400),
            (_images(1), {"conf": 5}, 422),
            (_images(1), {"data": "/etc"}, 400),
            ([("files", ("x.exe", b"MZ", "application/octet-stream"))], {}, 400),
            (_images(1), {"model": "nothere:1"}, 400),
        ]
        for files, options, status in cases:
            r = _upload(c, files, **options)
            assert r.status_code == status, (files, options, r.text)
        r = c.post("/api/jobs/upload", data={"options": "{not json"}, files=_images(1))
        assert r.status_code == 400
        r = c.post("/api/jobs/upload", content=b"--x\r\nbroken", headers={
            "content-type": "multipart/form-data; boundary=x"})  # fmt: skip
        assert r.status_code == 400
    assert not uploads.exists() or list(uploads.iterdir()) == []


def test_cancel_leaves_a_resumable_job_and_a_killed_server_loses_nothing(workspace, fleet):
    env = {"EVC_FAKE_SHARD_S": "1.5"}
    box: list[str] = []

    def started(kind, data):
        return kind == "job" and data["id"] in box[-1:] and 0 < data["done"] < data["items"]

    with api.running(workspace, env=env) as server:
        tokens = server.tokens
        listener = Collector(server, started, types="job")
        with server.client("operator") as c:
            box.append(_upload(c, _images(16), shard_size=2).json()["job"])
            listener.wait()
            r = c.post(f"/api/jobs/{box[0]}/cancel")
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 60
            # the job lets go of its lock, then its action ends: a cancel in between is
            # still taken (by the action, which is ending anyway)
            while [a["state"] for a in c.get("/api/actions", params={"ref": box[0]}).json()[
                    "items"]] != ["cancelled"]:  # fmt: skip
                assert time.monotonic() < deadline, "the job did not stop"
                time.sleep(0.2)
            job = c.get(f"/api/jobs/{box[0]}").json()
            assert job["holder"] is None
            assert job["state"] == "interrupted" and job["progress"]["pending"] > 0
            assert c.post(f"/api/jobs/{box[0]}/cancel").status_code == 409
            box.append("")  # the next job, not the first, is awaited
            listener = Collector(server, started, types="job")
            box[-1] = _upload(c, _images(16, "k"), shard_size=2).json()["job"]
            listener.wait()
        api.stop(server, kill=True)  # mid-job, no goodbye
    box.pop(0)
    before = {r["item"]: r for r in evcdb.workspace_db(workspace).query(
        "SELECT * FROM results WHERE job_id = ? AND state = 'ok'", [box[0]])}  # fmt: skip
    assert 0 < len(before) < 16
    with api.running(workspace, env=env, tokens=tokens) as server, server.client("operator") as c:
        job = c.get(f"/api/jobs/{box[0]}").json()
        assert job["state"] == "running" and job["holder"] is None  # resumable
        old = c.get("/api/actions", params={"ref": box[0]}).json()["items"]
        assert [a["state"] for a in old] == ["interrupted"]
        r = c.post(f"/api/jobs/{box[0]}/resume", params={"wait": 60}, json={})
        assert r.json()["action"]["state"] == "ok", r.json()
        rows = {r["item"]: r for r in evcdb.workspace_db(workspace).query(
            "SELECT * FROM results WHERE job_id = ?", [box[0]])}  # fmt: skip
        assert len(rows) == 16 and {r["state"] for r in rows.values()} == {"ok"}
        assert all(rows[i]["shard_id"] == r["shard_id"] for i, r in before.items())  # kept
        first = c.get("/api/jobs", params={"state": "interrupted"}).json()["items"]
        assert [j["id"] for j in first] != [] and c.post(
            f"/api/jobs/{first[0]['id']}/resume", params={"wait": 60}, json={}
        ).json()["action"]["state"] == "ok"


def test_run_configs_are_listed_checked_and_run_step_by_step(server, workspace):
    folder = workspace.root / "run_cfg"
    folder.mkdir()
    (folder / "check.yaml").write_text(
        "version: 1\nsteps:\n  - name: ping\n    do: device.check\n    target: node1,node2\n"
        "  - name: facts\n    do: device.facts\n    target: node1\n"
    )
    (folder / "bad.yml").write_text("version: 1\nsteps:\n  - do: model.deploy\n    wiht: {}\n")
    with server.client("viewer") as c:
        assert [f["name"] for f in c.get("/api/runconfigs").json()["items"]] == [
            "bad.yml", "check.yaml"]  # fmt: skip
        bad = c.post("/api/runconfigs/bad.yml/validate", json={}).json()
        assert not bad["ok"] and any("wiht" in p for p in bad["problems"])
        good = c.post("/api/runconfigs/check.yaml/validate", json={}).json()
        assert good["ok"] and [s["name"] for s in good["plan"]["steps"]] == ["ping", "facts"]
        assert c.get("/api/runconfigs/..%2Fevc.yaml").status_code in (404, 422)
        assert c.post("/api/runconfigs/check.yaml/run", json={}).status_code == 403
    box: list[str] = []
    listener = Collector(
        server, lambda k, d: k == "run" and d["id"] in box and d["state"] != "running",
        types="run,step",
    )  # fmt: skip
    with server.client("operator") as c:
        assert c.post("/api/runconfigs/bad.yml/run", json={}).status_code == 400
        r = c.post("/api/runconfigs/check.yaml/run", json={})
        assert r.status_code == 202
        box.append(r.json()["run"])
    steps = [(d["name"], d["state"]) for k, d, _ in listener.wait() if k == "step"]
    assert ("ping", "ok") in steps and ("facts", "ok") in steps
    with server.client("viewer") as c:
        run = c.get(f"/api/runs/{box[0]}").json()
        assert run["state"] == "success"
        assert run["steps"][0]["hosts"] == {"node1": "changed", "node2": "changed"}
        assert c.get("/api/runs").json()["items"][0]["id"] == box[0]


def test_events_recorded_by_another_process_arrive_within_a_second(server, workspace):
    listener = Collector(server, lambda k, d: k == "node" and d["node"] == "stop", types="node")
    db = evcdb.workspace_db(workspace)
    written = {}
    for i, node in enumerate(["node1", "node2", "node1", "node2", "stop"]):
        time.sleep(0.3)
        with evcdb.transaction(db):
            db["node_events"].insert({"node": node, "from_state": "online",
                                      "to_state": f"s{i}", "at": time.time()})  # fmt: skip
        written[f"s{i}"] = time.monotonic()
    got = {d["to_state"]: at for k, d, at in listener.wait(30) if k == "node"}
    latencies = [got[s] - written[s] for s in written]
    assert max(latencies) < 1.0, latencies


def test_tls_from_the_workspace_ca_anonymous_reading_and_the_unit(workspace, fleet):
    env = {"EVC_HOME": str(workspace.root)}
    r = evc("serve", "--tls", "--bind", "127.0.0.1:1", env=env)
    assert r.returncode == 2 and "workspace CA" in r.stderr
    pki.make_ca(registry.files(workspace))
    with api.running(workspace, "--tls", "--allow-anonymous-read", tls=True) as server:
        with server.client(None) as anon:
            assert anon.get("/api/devices").json()["total"] == 3
            assert anon.get("/api/me").json()["anonymous"] is True
            r = anon.post("/api/deployments/deploy", json={"ref": "faces:1.0", "target": "node1"})
            assert r.status_code == 403
            bad = {"Authorization": "Bearer evc_nope"}
            assert anon.get("/api/devices", headers=bad).status_code == 401
            assert anon.get("/").headers["strict-transport-security"]
        with pytest.raises(httpx.ConnectError):  # no CA given: not trusted
            httpx.get(f"{server.url}/api/health")
    assert oct(os.stat(workspace.root / ".evc" / "api" / "server.key").st_mode)[-3:] == "600"
    unit = evc("serve", "--systemd-unit", "--tls", "--bind", "0.0.0.0:8443", env=env, check=0)
    assert f"EVC_HOME={workspace.root}" in unit.stdout
    assert "serve --bind 0.0.0.0:8443 --max-upload 2g --tls" in unit.stdout
    assert "evc-serve-default" in unit.stdout
