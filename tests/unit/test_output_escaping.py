"""Names and messages that look like Rich markup are printed as written.

File names come from data sets, messages from nodes, device names and labels from
the database: ``photo[/]1.jpg`` made rich raise a MarkupError (an "internal error"),
``[bold red]...`` and ``[link=...]`` were swallowed into styling. Planted through
the fake fleet and the database, read back through the real CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from evc import db as evcdb
from evc import devices
from evc.ansible import HostResult, RunResult
from evc.config import init_workspace
from evc.infer import runner as jobs
from evc.model import catalogue
from tests.conftest import evc
from tests.unit.grafana_support import FakeFleet, populate

ITEMS = ["photo[/]1.jpg", "[link=file:x]y[/link].jpg", "[bold red]alarm.jpg"]
NODE_ERROR = "[red]decoder[/red] said [/] no"
DEVICE = "[bold red]dev9"
LABEL = "[link=https://x]y[/link]"
GROUP = "[blink]g"
OWNER = "[bold]team[/bold] :smile:"


class MarkupFleet(FakeFleet):
    """The fake fleet, whose node reports an error in markup for the 'alarm' item."""

    def _shard(self, host, extravars):
        result = super()._shard(host, extravars)
        lines = [json.loads(x) for x in result.outputs["results"]["jsonl"].splitlines()]
        for line in lines:
            if "alarm" in line["item"]:
                line.update(ok=False, error=NODE_ERROR, detections=[])
        result.outputs["results"]["jsonl"] = "".join(json.dumps(x) + "\n" for x in lines)
        return result


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(workspace env, job id of the planted data set)."""
    root = tmp_path_factory.mktemp("escaping")
    ws = init_workspace(root / "ws")
    with pytest.MonkeyPatch.context() as mp:
        populate(ws, mp, root / "data")
        mp.setattr(jobs, "run_playbook", MarkupFleet())
        data = root / "planted"
        for item in ITEMS:  # photo[/]1.jpg is the file ]1.jpg in the folder photo[
            (data / item).parent.mkdir(parents=True, exist_ok=True)
            (data / item).write_bytes(b"\xff\xd8 not decoded by the fake fleet")
        result = jobs.run(ws, jobs.RunOptions(model="faces:1.1", data=data, target="node1"))
    db = evcdb.workspace_db(ws)
    db["devices"].insert(evcdb.device_row({
        "name": DEVICE, "host": "10.0.0.99", "groups": [GROUP], "labels": {"site": LABEL},
        "added_at": time.time(), "status": "offline", "arch": LABEL,
    }))  # fmt: skip
    devices.regenerate_inventory(ws, db)
    model = catalogue.get(ws, "faces:1.0")
    model.version, model.owner = "9.0", OWNER
    catalogue.save(ws, model)
    return {"EVC_HOME": str(ws.root)}, result.job["id"]


def _shows(proc, *texts: str) -> None:
    assert proc.returncode == 0, proc.stderr
    assert "internal error" not in proc.stderr and "MarkupError" not in proc.stderr
    for text in texts:
        assert text in proc.stdout, f"{text!r} not shown literally:\n{proc.stdout}"


def test_infer_results_show_file_names_and_node_errors_as_written(planted):
    env, job = planted
    _shows(evc("infer", "results", job, env=env), *ITEMS, NODE_ERROR)


def test_device_list_show_and_logs_show_print_names_labels_and_groups_as_written(planted):
    env, _ = planted
    _shows(evc("device", "list", env=env), DEVICE, GROUP, LABEL)
    _shows(evc("device", "show", DEVICE, env=env), DEVICE, LABEL, GROUP)
    _shows(evc("logs", "show", "--since", "3h", env=env), DEVICE)


def test_model_list_and_show_print_owners_as_written(planted):
    env, _ = planted
    _shows(evc("model", "list", env=env), OWNER)
    _shows(evc("model", "show", "faces:9.0", env=env), OWNER)


def test_run_and_run_show_print_step_results_as_written(planted, tmp_path):
    env, _ = planted
    out = tmp_path / "[bold]g[/]x"
    path = tmp_path / "r.yaml"
    path.write_text(f'version: 1\nsteps:\n  - {{do: grafana.build, with: {{out: "{out}"}}}}\n')
    _shows(evc("run", path, env=env), str(out))
    db = evcdb.connect(Path(env["EVC_HOME"]) / "db" / "evc.db", migrated=True)
    (run_id,) = [r["id"] for r in db.query("SELECT id FROM scenario_runs")]
    _shows(evc("run", "show", run_id, env=env), str(out))


def test_error_messages_print_what_the_user_typed(planted):
    env, _ = planted
    proc = evc("device", "show", "[/]nope[link=x]", env=env, check=2)
    assert "error: No device named '[/]nope[link=x]'" in proc.stderr


def test_per_host_messages_and_registry_errors_are_printed_as_written(capsys):
    from evc.cli.output import print_run
    from evc.cli.registry import _print_status
    from evc.registry_server import ReadOnlyStatus, RegistryStatus

    run = RunResult("p.yml", "all", "r1", "/a", 1.0, 2.0, 2, {
        "n1": HostResult("n1", "failed", failed=1, message=NODE_ERROR),
        DEVICE: HostResult(DEVICE, "ok", ok=1),
    })  # fmt: skip
    print_run(run)
    cert = {"sans": ["reg"], "days_left": 9}
    ro = ReadOnlyStatus("reg:5001", "c-ro", "running", [DEVICE], error=NODE_ERROR)
    _print_status(RegistryStatus("reg:5000", "c", "running", "img", cert, cert, ro,
                                 repositories=[LABEL], error=NODE_ERROR), json=False)  # fmt: skip
    shown = capsys.readouterr().out
    for text in (NODE_ERROR, DEVICE, LABEL):
        assert text in shown
