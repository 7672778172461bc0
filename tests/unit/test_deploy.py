"""What a deploy sends to the nodes (the fake fleet records it)."""

from evc.model import deploy


def _sent(fleet) -> list[dict]:
    return [x["evc_targets"] for name, _, x in fleet.calls if name == "model_deploy.yml"]


def test_a_model_container_has_a_memory_limit_unless_told_otherwise(fleet, workspace):
    """A hostile input or a leak cannot starve a node: a limit by default (issue 14.10)."""
    deploy.deploy(workspace, deploy.DeployOptions(ref="faces:1.0", target="node1"))
    deploy.deploy(workspace, deploy.DeployOptions(ref="faces:1.0", target="node2", memory="2g"))
    first, second = _sent(fleet)
    assert first["node1"]["memory"] == deploy.DEFAULT_MEMORY == "1g"
    assert second["node2"]["memory"] == "2g"
