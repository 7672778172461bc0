import time

import pytest

from evc import db as evcdb
from evc.infer import nodes, runner
from evc.model import deploy
from tests.unit.fake_fleet import FakeFleet, add_devices, add_model


@pytest.fixture
def fleet(workspace, monkeypatch):
    """A fake fleet (tests/unit/fake_fleet.py) standing in for run_playbook, with
    faces:1.0 deployed on node1 and node2 (node3 is down)."""
    now = time.time()
    add_devices(workspace, evcdb.workspace_db(workspace), now)
    add_model(workspace, "1.0", now)
    fake = FakeFleet(down={"node3"})
    monkeypatch.setattr(deploy, "run_playbook", fake)
    monkeypatch.setattr(runner, "run_playbook", fake)
    monkeypatch.setattr(nodes, "run_playbook", fake)
    deploy.deploy(workspace, deploy.DeployOptions(ref="faces:1.0", target="node1,node2"))
    fake.calls.clear()
    return fake
