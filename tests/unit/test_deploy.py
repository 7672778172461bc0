"""What a deploy sends to the nodes (the fake fleet records it)."""

import time

from evc.model import deploy
from evc.model.deployments import current
from tests.unit.fake_fleet import add_model


def _sent(fleet) -> list[dict]:
    return [x["evc_targets"] for name, _, x in fleet.calls if name == "model_deploy.yml"]


def test_a_model_container_has_a_memory_limit_unless_told_otherwise(fleet, workspace):
    """A hostile input or a leak cannot starve a node: a limit by default (issue 14.10)."""
    deploy.deploy(workspace, deploy.DeployOptions(ref="faces:1.0", target="node1"))
    deploy.deploy(workspace, deploy.DeployOptions(ref="faces:1.0", target="node2", memory="2g"))
    first, second = _sent(fleet)
    assert first["node1"]["memory"] == deploy.DEFAULT_MEMORY == "1g"
    assert second["node2"]["memory"] == "2g"


def test_rollback_sends_each_node_the_version_it_ran_before(fleet, workspace):
    add_model(workspace, "2.0", time.time())
    deploy.deploy(workspace, deploy.DeployOptions(ref="faces:2.0", target="node1"))
    back = deploy.rollback(workspace, deploy.RollbackOptions(name="faces", target="node1"))
    assert back.ok and back.versions == {"node1": "1.0"}
    assert _sent(fleet)[-1]["node1"]["version"] == "1.0"
    assert {r["node"]: r["version"] for r in current(workspace, "faces")} == {
        "node1": "1.0",
        "node2": "1.0",
    }


def test_rollback_on_failure_puts_back_only_the_nodes_the_rollout_touched(fleet, workspace):
    """node3 is down: the rollout fails; node2 goes back to 1.0, node1 (not targeted)
    and node3 (never reached, nothing before) are left alone."""
    add_model(workspace, "2.0", time.time())
    result = deploy.deploy(workspace, deploy.DeployOptions(
        ref="faces:2.0", target="node2,node3", rollback_on_failure=True))  # fmt: skip
    assert not result.ok and result.exit_code == 1
    assert result.rolled_back == {"node2": "1.0"}
    calls = [(target, x["evc_targets"]) for name, target, x in fleet.calls]
    assert calls[-1][0] == "node2" and calls[-1][1]["node2"]["version"] == "1.0"
    assert all("node1" not in target for target, _ in calls)
    assert {r["node"]: r["version"] for r in current(workspace, "faces")} == {
        "node1": "1.0",
        "node2": "1.0",
    }
