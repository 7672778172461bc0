"""Beyond one controller: a fleet run executed by ``ansible-runner worker`` in another
container on the lab network (transmit | worker | process, as AWX runs jobs on remote
execution nodes) and processed back on the controller, with the per-host results of a
local run of the same playbook."""

import json
import subprocess
from pathlib import Path

import pytest

from evc.ansible import run_playbook
from evc.lab import worker


@pytest.fixture(scope="module")
def lab_worker(lab_session):
    ws = lab_session[0]
    command = worker.start(ws)
    yield command
    worker.stop(ws)


def test_a_run_through_a_worker_container_equals_a_local_run(lab_ws, lab_worker):
    local = run_playbook(lab_ws, "ping.yml", "all")
    streamed = run_playbook(lab_ws, "ping.yml", "all", worker=lab_worker)
    assert local.ok and streamed.ok, streamed.hosts
    assert sorted(streamed.hosts) == sorted(local.hosts) and len(local.hosts) == 3
    assert {h: vars(r) for h, r in streamed.hosts.items()} == {
        h: vars(r) for h, r in local.hosts.items()
    }
    # It ran there: the run's command file (sent back by the worker) has the worker's PATH.
    command = json.loads((Path(streamed.artifacts_dir) / "command").read_text())
    assert command["env"]["PATH"].startswith("/opt/evc-worker/bin:")
    assert (Path(streamed.artifacts_dir) / "job_events").is_dir()
    # The workspace key came in the stream, went to an ssh-agent, and stayed on no disk.
    found = subprocess.run(
        ["docker", "exec", worker.container_name(lab_ws),
         "grep", "-rlI", "-D", "skip", "PRIVATE KEY", "/tmp", "/root", "/var/tmp"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert found.returncode == 1 and found.stdout == "", found
