"""Desired state on the real lab: drift planted by hand (a model container stopped, a
registry CA removed, a node re-imaged, a stray EVC container) is what `evc fleet status`
reports, `evc fleet converge` repairs it, a second converge changes nothing, and a job
afterwards runs on every node that runs the model. Containers without EVC's labels are
left alone. The session fleet is left as found: the model runs on node1 and node2 again
and the next module without `trusted` revokes the trust."""

import json
import os
import signal
import subprocess
import time

from evc import db as evcdb
from evc import registry
from evc.lab.nodes import Nodes
from evc.model.deployments import current
from tests.conftest import EVC, evc
from tests.lab.conftest import DEPLOYED as MODEL
from tests.lab.conftest import evc_json


def _on(ws, node, *cmd):
    res = Nodes(ws).get(node).exec_run(list(cmd))
    return res.exit_code, res.output.decode(errors="replace").strip()


def _drift(status: dict) -> dict[str, list]:
    return {n["host"]: sorted((d["kind"], d["model"]) for d in n["drift"]) for n in status["nodes"]}


def test_fleet_converges_to_what_the_database_says(lab_ws, lab_env, deployed, trusted, tmp_path):
    ws = lab_ws
    t0 = time.monotonic()
    status = evc_json("fleet", "status", env=lab_env)
    assert status["ok"], status
    cost = {"status_s": status["duration_s"]}

    # plant: node1's model stopped by hand, node3's CA removed, a stray EVC container and
    # an unlabelled one on node3, node2 re-imaged (container and its Docker volume gone)
    ca = f"/etc/docker/certs.d/{registry.load(ws).ro_address}/ca.crt"
    image = next(r["image"] for r in current(ws, MODEL) if r["node"] == "node1")
    assert _on(ws, "node1", "docker", "stop", f"evc-model-{MODEL}")[0] == 0
    assert _on(ws, "node3", "rm", ca)[0] == 0
    assert _on(ws, "node1", "docker", "create", "--name", "evc-model-stray", "--label",
               "evc.managed=true", image)[0] == 0  # fmt: skip
    assert _on(ws, "node1", "docker", "create", "--name", "evc-model-mine", image)[0] == 0
    nodes = Nodes(ws)
    nodes.remove(nodes.get("node2"))
    evc("lab", "up", "--nodes", "3", env=lab_env, check=0, timeout=900)

    status = evc_json("fleet", "status", env=lab_env, check=1)
    assert not status["ok"]
    assert _drift(status) == {
        "node1": [("model-not-running", MODEL), ("unknown-container", "stray")],
        "node2": [("ca-missing", None), ("credential-missing", None),
                  ("model-not-running", MODEL)],
        "node3": [("ca-missing", None)],
    }  # fmt: skip
    dry = evc_json("fleet", "converge", "--dry-run", env=lab_env, check=1)
    assert not dry["changed"] and _drift(dry) == _drift(status)

    started = time.monotonic()
    fixed = evc_json("fleet", "converge", env=lab_env)
    cost["converge_s"] = round(time.monotonic() - started, 1)
    assert fixed["ok"] and fixed["changed"], fixed
    again = evc_json("fleet", "converge", env=lab_env)
    assert again["ok"] and not again["changed"], again
    assert _drift(again) == {"node1": [], "node2": [], "node3": []}
    assert _on(ws, "node1", "docker", "inspect", "evc-model-stray")[0] != 0
    assert _on(ws, "node1", "docker", "inspect", "evc-model-mine")[0] == 0  # not EVC's
    _on(ws, "node1", "docker", "rm", "evc-model-mine")

    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image
    from skimage import data as pictures

    for i in range(8):
        Image.fromarray(pictures.astronaut()).save(data / f"a{i}.jpg")
    job = evc_json("infer", "run", f"{MODEL}:1", "all", "--data", str(data), "--strategy",
                   "round-robin", env=lab_env)  # fmt: skip
    assert job["ok"] == 8, job
    assert job["skipped_nodes"] == {"node3": f"{MODEL}:1 is not deployed here"}, job
    assert sorted(job["nodes"]) == ["node1", "node2"], job
    runs = evcdb.workspace_db(ws).query(
        "SELECT playbook, target, ended - started AS s FROM ansible_runs ORDER BY started"
    )
    cost["runs_s"] = [(r["playbook"], r["target"], round(r["s"], 1)) for r in runs][-12:]
    cost["total_s"] = round(time.monotonic() - t0, 1)
    print(f"fleet lab test cost: {cost}")


def _until(check, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.5)


def test_monitor_converge_brings_a_node_back_to_its_models(lab_ws, lab_env, deployed, trusted):
    """`evc monitor --converge`: node2's model stopped by hand, then node2 itself; when
    node2 comes back it runs its declared model again with no command typed, and the
    repair is a node event."""
    ws, db = lab_ws, evcdb.workspace_db(lab_ws)
    assert _on(ws, "node2", "docker", "stop", f"evc-model-{MODEL}")[0] == 0
    evc("lab", "stop", "node2", env=lab_env, check=0)
    started = time.time()
    monitor = subprocess.Popen(
        [*EVC, "monitor", "lab", "--interval", "2", "--converge", "--json"],
        env={**os.environ, **lab_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip

    def status(node: str) -> str:
        return next(iter(db.query("SELECT status FROM devices WHERE name = ?", [node])))["status"]

    def running() -> bool:
        return _on(ws, "node2", "docker", "inspect", "-f", "{{.State.Running}}",
                   f"evc-model-{MODEL}") == (0, "true")  # fmt: skip

    try:
        _until(lambda: status("node2") != "online", "round that misses node2", 120)
        evc("lab", "start", "node2", env=lab_env, check=0)
        back = time.time()
        _until(running, "converge of node2 by the monitor", 300)
        repaired = time.time()
    finally:
        monitor.send_signal(signal.SIGTERM)
        out, err = monitor.communicate(timeout=300)
    assert monitor.returncode == 0 and "Traceback" not in err, err
    rounds = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    converged = [r for r in rounds if r.get("converged")]
    assert converged and "node2" in converged[0]["converge_why"], rounds
    events = db.query(
        "SELECT from_state, to_state FROM node_events WHERE node = 'node2' AND at > ? "
        "AND from_state LIKE 'drift:%'", [started],
    )  # fmt: skip
    assert (f"drift:model-not-running:{MODEL}", "repaired") in [tuple(e.values()) for e in events]
    print(f"monitor --converge: node2 running its model {repaired - back:.1f} s after its start")
