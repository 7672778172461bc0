"""CI runs the demo: `evc run run_cfg/demo.yaml` on the lab, end to end, through the CLI.

One run (building both images and deploying them takes minutes). It checks what
`make demo` promises: a complete inference job per model with every item accounted
for and real faces found on the astronaut samples, spread over the nodes, telemetry
rows for every lab node, the dashboard files, and a scenario run row per step.
"""

import json
from pathlib import Path

import pytest

from evc import db as evcdb
from evc.resources import data_dir
from tests.conftest import evc

DEMO = data_dir("run_cfg") / "demo.yaml"
SAMPLES = sorted(p.name for p in (data_dir("run_cfg") / "samples").glob("*.jpg"))
FACES = {"astronaut.jpg": 166, "astronaut-mirrored.jpg": 223}  # item: x of the face (480 px)


@pytest.fixture
def demo_run(lab_ws, lab_env):
    proc = evc("run", DEMO, "--json", env=lab_env, timeout=2400)
    assert proc.returncode in (0, 1), proc.stderr
    yield json.loads(proc.stdout), proc
    for model in ("face-haar", "yolo-onnx"):  # leave the lab as the other lab tests expect
        evc("model", "undeploy", model, "all", env=lab_env)
        evc("model", "delete", f"{model}:1.0", "--force", env=lab_env)
    evc("cert", "revoke", "all", env=lab_env)


def test_demo_run_config_end_to_end(lab_ws, lab_session, demo_run):
    run, proc = demo_run
    db = evcdb.workspace_db(lab_ws)
    steps = {s["name"]: s for s in run["steps"]}
    assert list(steps) == [
        "check-fleet", "registry", "trust-registry", "build-faces", "push-faces", "build-yolo",
        "push-yolo", "deploy-faces", "deploy-yolo", "infer-faces", "infer-yolo", "telemetry",
        "dashboards",
    ]  # fmt: skip
    nodes = sorted(n["name"] for n in lab_session[1]["nodes"])
    for name in ("check-fleet", "trust-registry", "deploy-faces", "deploy-yolo"):
        assert steps[name]["state"] == "ok", steps[name]["summary"]
        assert steps[name]["hosts"] == {n: steps[name]["hosts"][n] for n in nodes}

    # One complete job per model: every sample has exactly one final row.
    for step, model in (("infer-faces", "face-haar"), ("infer-yolo", "yolo-onnx")):
        assert steps[step]["state"] == "ok", steps[step]["summary"]
        job_id = steps[step]["detail"]["id"]
        job = db["jobs"].get(job_id)
        assert job["model"] == model and job["state"] == "complete"
        rows = list(db.query("SELECT * FROM results WHERE job_id = ? ORDER BY item", [job_id]))
        assert [r["item"] for r in rows] == SAMPLES
        assert all(r["state"] in ("ok", "error") for r in rows)
        assert len({r["node"] for r in rows}) >= 2  # spread over the nodes
    faces = list(db.query(
        "SELECT item, label, x, w FROM detections WHERE job_id = ?",
        [steps["infer-faces"]["detail"]["id"]],
    ))  # fmt: skip
    assert {f["item"] for f in faces} == set(FACES)
    for f in faces:
        assert f["label"] == "face" and abs(f["x"] - FACES[f["item"]]) < 20 and f["w"] > 60

    # Telemetry for every lab node, and the dashboards on disk.
    assert steps["telemetry"]["state"] == "ok", steps["telemetry"]["summary"]
    sampled = {r["node"] for r in db.query("SELECT DISTINCT node FROM metrics")}
    assert set(nodes) <= sampled
    assert steps["dashboards"]["state"] == "ok", steps["dashboards"]["summary"]
    paths = steps["dashboards"]["detail"]
    assert paths and all(Path(p).is_file() for p in paths)

    # The run and each step are recorded.
    row = db["scenario_runs"].get(run["id"])
    assert row["state"] == "success" and row["steps_ok"] == 13 and row["resume_from"] is None
    assert proc.returncode == 0
    recorded = db["scenario_steps"].rows_where("run_id = ?", [run["id"]])
    assert {r["state"] for r in recorded} == {"ok"}
