"""`evc serve` against the real lab: a model deployed through the API (the session's,
on the node that lacks it), a job submitted through the API and followed on its event
stream to the end, role checks; then the web console in headless Chromium (Debian's
chromium): log in, the lab's nodes on the Fleet page, a job started from the Jobs page
followed to 100 %, the astronaut's face box on the Results page, and a node stopped with
`evc lab stop` turning offline on the Fleet page. Screenshots of each page go under the
test's tmp folder."""

import shutil
import time

import pytest
from playwright.sync_api import expect

from evc.api import tokens
from tests.conftest import evc
from tests.lab.conftest import DEPLOYED
from tests.unit import api_support as api

MODEL = DEPLOYED  # the session's model, on node1 and node2 (tests/lab/conftest.py)
SAMPLES = api.REPO / "run_cfg" / "samples"
ASTRONAUT = (177, 66, 95, 95)  # the face in skimage's 512 px astronaut (test_models_lab)


@pytest.fixture(scope="module")
def served(lab_session, deployed, trusted, tmp_path_factory):
    """`evc serve` on the lab's workspace (no fake), a token per role, and the session's
    MODEL:1 deployed through the API on node3 as well (the other modules' nodes already
    run it: no model of its own to build); node3 is left without it again afterwards."""
    ws = lab_session[0]
    env = {"EVC_HOME": str(ws.root)}
    root = tmp_path_factory.mktemp("shared")
    shutil.copytree(SAMPLES, root / "samples")
    made = {role: tokens.create(ws, tokens.CreateOptions(name=f"lab-{role}", role=role))[0]
            for role in tokens.ROLES}  # fmt: skip
    try:
        with api.running(ws, "--data-root", str(root), fake=False, tokens=made) as server:
            with server.client("operator") as c:
                r = c.post("/api/deployments/deploy", params={"wait": 600}, timeout=660,
                           json={"ref": f"{MODEL}:1", "target": "node3"})  # fmt: skip
                assert r.status_code == 202 and r.json()["action"]["state"] == "ok", r.json()
            yield server
    finally:
        evc("model", "undeploy", MODEL, "node3", env=env, check=0)
        for role in tokens.ROLES:
            evc("token", "revoke", f"lab-{role}", env=env, check=0)


def _near(box, width, expected=ASTRONAUT, tolerance=10):
    """``box`` of an image ``width`` px wide, scaled to the 512 px original, within
    ``tolerance`` px of ``expected``."""
    scale = 512 / width
    return all(abs(v * scale - e) <= tolerance for v, e in zip(box, expected, strict=True))


def test_deploy_and_a_job_through_the_api_followed_on_its_stream_with_roles(served):
    with served.client("admin") as admin:
        running = admin.get("/api/deployments", params={"model": MODEL}).json()["items"]
        assert sorted(r["node"] for r in running) == ["node1", "node2", "node3"]
        assert {r["state"] for r in running} == {"running"}
    with served.client("viewer") as viewer:
        r = viewer.post("/api/deployments/undeploy", json={"name": MODEL, "target": "node1"})
        assert r.status_code == 403
    with served.client("admin") as admin:
        temp = admin.post("/api/tokens", json={"name": "lab-temp", "role": "operator"}).json()
        assert admin.delete("/api/tokens/lab-temp").status_code == 200
    with served.client(None) as anon:
        gone = {"Authorization": f"Bearer {temp['token']}"}
        assert anon.get("/api/jobs", headers=gone).status_code == 401

    events, job_id = [], None
    stream = served.events("viewer", timeout=300)
    assert next(stream)[0] == "hello"
    with served.client("operator") as c:
        r = c.post("/api/jobs", json={"model": f"{MODEL}:1", "target": "node1,node2,node3",
                                      "data": "samples"})  # fmt: skip
        assert r.status_code == 202, r.text
        job_id = r.json()["job"]
    for kind, data in stream:
        if kind == "job" and data["id"] == job_id:
            events.append(data)
            if data["state"] != "running":
                break
    stream.close()
    assert events[-1]["state"] == "complete" and events[-1]["percent"] == 100.0, events[-1]
    assert events[-1]["done"] == events[-1]["items"] == 6
    with served.client("viewer") as c:
        page = c.get(f"/api/jobs/{job_id}/results", params={"label": "face"}).json()
        faces = {r["item"]: r for r in page["items"]}
        (face,) = faces["astronaut.jpg"]["detections"]
        box = (face["x"], face["y"], face["w"], face["h"])
        assert _near(box, faces["astronaut.jpg"]["width"]), box


def test_console_follows_a_job_to_its_boxes_and_a_stopped_node_going_offline(
    served, lab_session, tmp_path
):
    env = {"EVC_HOME": str(lab_session[0].root)}
    took = {}
    with api.console(served, tmp_path / "screens") as ui:
        ui.login("operator")
        took["fleet"] = ui.open("fleet", "fleet")
        expect(ui.page.locator("#view tbody tr[data-key]")).to_have_count(3)
        for node in ("node1", "node2", "node3"):
            assert ui.page.get_attribute(f"tr[data-key={node}] .status", "data-status") in (
                "online", "unknown")  # fmt: skip
        for page in ("models", "jobs", "results", "runs"):
            took[page] = ui.open(page, page)

        ui.open("jobs")
        ui.page.select_option("#job-form select[name=model]", f"{MODEL}:1")
        ui.page.fill("#job-form input[name=target]", "node1,node2")
        ui.page.fill("#job-form input[name=data]", "samples")
        ui.page.click("#job-form button[type=submit]")
        ui.page.wait_for_selector("#job[data-job]")
        ui.page.wait_for_selector("#job[data-state=complete][data-percent='100']", timeout=300_000)
        ui.shot("job")
        job_id = ui.page.get_attribute("#job", "data-job")

        took["results-job"] = ui.open(f"results/{job_id}", "results-job")
        figure = ui.page.locator("figure[data-item='astronaut.jpg']")
        box = figure.locator("li.box[data-label=face]").get_attribute("data-box")
        width = ui.page.evaluate(
            "document.querySelector(\"figure[data-item='astronaut.jpg'] canvas\").width"
        )
        assert _near([float(v) for v in box.split(",")], width), (box, width)

        ui.open("fleet")
        evc("lab", "stop", "node3", env=env, check=0)
        try:
            evc("logs", "collect", "node3", "--offline-after", "1", env=env, check=1)
            started = time.monotonic()  # the status change is recorded as collect ends
            offline = ui.page.locator("tr[data-key=node3] .status[data-status=offline]")
            expect(offline).to_have_count(1, timeout=10_000)  # live, without a reload
            print(f"node3 offline on the page {time.monotonic() - started:.1f} s after collect")
            ui.shot("fleet-node3-offline")
        finally:
            evc("lab", "start", "node3", env=env, check=0)
            evc("logs", "collect", "node3", "--offline-after", "1", env=env, check=0)
        assert ui.errors == []
    print("page load times (s):", {k: round(v, 2) for k, v in took.items()})
    assert max(took.values()) < 5, took
