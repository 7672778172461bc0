"""A device that is removed takes its deployments with it (issue 17): the catalogue never
lists a model as running on a node EVC no longer manages."""

import json

from evc import db as evcdb
from evc import devices
from evc.lab import fleet as lab_fleet
from evc.lab.nodes import LabNode
from evc.model import deployments
from tests.conftest import evc


def _deployed_on(ref: str) -> tuple[list[str], list[str]]:
    """Where `evc model list` and `evc model show` say REF runs."""
    listed = json.loads(evc("model", "list", "--json", check=0).stdout)
    shown = json.loads(evc("model", "show", ref, "--json", check=0).stdout)
    return sorted({n for m in listed if m["ref"] == ref for n in m["deployed_on"]}), sorted(
        shown["deployed_on"]
    )


def test_device_remove_ends_its_deployments(fleet, workspace):
    """faces:1.0 runs on node1 and node2; after `evc device remove node1` neither the list
    nor show names node1, the history says why, and re-enrolling node1 runs nothing."""
    assert _deployed_on("faces:1.0") == (["node1", "node2"], ["node1", "node2"])
    evc("device", "remove", "node1", check=0)
    assert _deployed_on("faces:1.0") == (["node2"], ["node2"])
    last = deployments.history(workspace, 1, 0, node="node1")["items"][0]
    assert (last["state"], last["run_id"], last["version"]) == ("removed", None, "1.0")
    assert "removed" in last["error"]
    assert not fleet.calls  # nothing was sent to the node: it is no longer EVC's
    db = evcdb.workspace_db(workspace)
    with evcdb.transaction(db):  # the same name enrolled again: a new board, nothing on it
        db["devices"].insert(evcdb.device_row({"name": "node1", "host": "10.0.0.21",
                                               "added_at": 0.0, "status": "unknown"}))  # fmt: skip
    assert [r["node"] for r in deployments.current(workspace, "faces")] == ["node2"]


def test_lab_register_ends_the_deployments_of_gone_and_recreated_nodes(
    fleet, workspace, monkeypatch
):
    """node1's container is gone, node2 came back with another address: both devices are
    removed (node2 enrolled again) and neither still counts as running faces:1.0."""
    db = evcdb.workspace_db(workspace)
    lab = workspace.lab_name
    with evcdb.transaction(db):
        for name in ("node1", "node2"):
            db["devices"].update(name, {"labels": json.dumps({"lab": lab, "profile": "rpi"})})
    node2 = LabNode("node2", f"evc-{lab}-node2", "10.0.0.99", "rpi", 4, 4 << 30, "running")
    monkeypatch.setattr(lab_fleet.Lab, "nodes", lambda self: [node2])
    monkeypatch.setattr(devices, "run_playbook", fleet)  # the facts of the new node2
    lab_fleet.Lab(workspace, client=object()).register()
    assert deployments.current(workspace, "faces") == []
    why = {r["node"]: r["error"] for r in deployments.history(workspace, 2, 0)["items"]}
    assert "gone" in why["node1"] and "recreated" in why["node2"]
    assert devices.get(db, "node2")["host"] == "10.0.0.99"
