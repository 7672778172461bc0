"""Desired state without a fleet: the drift of a node from what is declared (a pure
function of the two), the node module's report of its own state, and the CLI's bad
input."""

import json

import pytest

from evc import db as evcdb
from evc.fleet import ConvergeResult, Declared, Drift, NodeStatus, drift, runs_image
from tests.conftest import evc
from tests.unit.test_telemetry import node

CA = "a" * 64
IMAGE = "10.0.0.1:5001/evc/faces@sha256:" + "1" * 64
OTHER = "10.0.0.1:5001/evc/faces@sha256:" + "2" * 64
ROW = {"model": "faces", "version": "1.0", "image": IMAGE, "cpus": None, "memory": "1g"}


def _want(trust=True, models=("faces",)):
    return Declared(trust, CA, {m: {**ROW, "model": m} for m in models})


def _report(containers=(), ca=CA, credential=True):
    return {"containers": list(containers), "ca_sha256": ca, "credential": credential}


def _container(name="evc-model-faces", state="running", image=IMAGE, digests=()):
    return {"name": name, "image": image, "state": state, "digests": list(digests)}


def kinds(items: list[Drift]) -> list[str]:
    return [d.kind for d in items]


def test_a_node_as_declared_has_no_drift():
    assert drift("node1", _want(), "ok", _report([_container()])) == []


def test_nothing_declared_nothing_expected():
    assert drift("node1", _want(trust=False, models=()), "ok", _report(ca=None)) == []


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (_report([_container()], ca=None), ["ca-missing"]),
        (_report([_container()], ca="b" * 64), ["ca-stale"]),
        (_report([_container()], credential=False), ["credential-missing"]),
        (_report([]), ["model-not-running"]),
        (_report([_container(state="exited")]), ["model-not-running"]),
        (_report([_container(image=OTHER)]), ["wrong-digest"]),
        (_report([_container(), _container("evc-model-old")]), ["unknown-container"]),
        (_report([], ca=None, credential=False),
         ["ca-missing", "credential-missing", "model-not-running"]),
    ],
)  # fmt: skip
def test_each_drift_is_named(report, expected):
    items = drift("node2", _want(), "ok", report)
    assert kinds(items) == expected
    assert all(d.fix == "evc fleet converge node2" for d in items)


def test_a_missing_puller_keeps_a_node_out_of_pull_jobs_only():
    """A node that holds a queue credential but runs no puller (a revoke took it, a push
    gave the credential back) still serves push-mode jobs."""
    from evc.ansible import HostResult, RunResult
    from evc.fleet import TASK, not_serving

    report = {**_report([_container()]), "queue_credential": True}
    host = HostResult("node1", outputs={TASK: {"stdout": json.dumps({"fleet": report})}})
    run = RunResult("fleet_status.yml", "node1", "x", "", 0.0, 0.0, 0, {"node1": host})
    rows = {"node1": {**ROW, "model": "faces"}}
    assert not_serving(run, "faces", rows) == {}
    assert list(not_serving(run, "faces", rows, pull=True)) == ["node1"]


def test_a_node_with_a_queue_credential_runs_a_puller_per_model():
    """The puller is no unknown container; missing where the node holds the queue
    credential, it is drift that the deploy play repairs; one left by a model gone is
    unknown (the undeploy play removes both)."""
    puller = _container("evc-pull-faces", image="anything")
    with_queue = {**_report([_container(), puller]), "queue_credential": True}
    assert drift("node1", _want(), "ok", with_queue) == []
    assert drift("node1", _want(), "ok", _report([_container(), puller])) == []
    (item,) = drift("node1", _want(), "ok", {**_report([_container()]), "queue_credential": True})
    assert (item.kind, item.model) == ("puller-not-running", "faces")
    stopped = {**with_queue, "containers": [_container(), {**puller, "state": "exited"}]}
    assert kinds(drift("node1", _want(), "ok", stopped)) == ["puller-not-running"]
    assert drift("node1", _want(), "ok", _report([_container()])) == []  # no credential
    stray = _report([_container(), _container("evc-pull-old"), _container("evc-model-old")])
    assert [(d.kind, d.model) for d in drift("node1", _want(), "ok", stray)] == [
        ("unknown-container", "old"), ("unknown-container", "old"),
    ]  # fmt: skip


def test_a_missing_model_names_its_version_and_the_fix():
    (item,) = drift("node2", _want(), "ok", _report([]))
    assert item.message == "faces:1.0 is not running on node2 (container absent)"
    assert item.model == "faces"


def test_the_same_image_by_another_reference_is_no_drift():
    """A container started from a tag still runs the declared image when that image
    carries the declared digest."""
    c = _container(image="faces:latest", digests=["10.0.0.1:5001/evc/faces@" + _sha(IMAGE)])
    assert runs_image(c, IMAGE)
    assert drift("node1", _want(), "ok", _report([c])) == []


def _sha(image):
    return image.rpartition("@")[2]


def test_an_unreachable_node_says_why_and_nothing_else():
    items = drift("node3", _want(), "unreachable", None, "node unreachable over SSH (timeout)")
    assert kinds(items) == ["unreachable"]
    assert "timeout" in items[0].message


def test_a_revoked_node_with_models_is_told_to_push_not_converge():
    (item,) = drift("node1", _want(trust=False), "ok", _report([_container()], ca=None))
    assert item.kind == "credential-missing" and item.fix == "evc cert push node1"


def test_other_containers_and_odd_entries_from_a_node_are_data():
    """What a node reports is data: containers that are not evc-model-* are no drift,
    entries that are not objects are ignored, long names are cut in messages."""
    odd = [
        "not a dict",
        {"name": None},
        _container("grafana"),
        _container("evc-model-" + "x" * 500),
    ]
    items = drift("node1", _want(), "ok", _report([_container(), *odd]))
    assert kinds(items) == ["unknown-container"]
    assert len(items[0].message) < 200


def test_converge_is_ok_only_when_each_drift_was_repaired():
    item = Drift("ca-missing", "no registry CA on the node", "evc fleet converge n")
    repaired = {"kind": "ca-missing", "model": None, "action": "cert push", "ok": True}
    fine = NodeStatus("n", "drift", [item], [{**repaired, "done": True}])
    dry = NodeStatus("n", "drift", [item], [{**repaired, "done": False}])
    assert ConvergeResult([fine], 0.1).ok
    assert not ConvergeResult([dry], 0.1, dry_run=True).ok
    assert ConvergeResult([NodeStatus("n", "ok")], 0.1).ok


def test_the_node_module_reads_its_login_without_the_secret(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"10.0.0.1:5001": {"auth": "c2VjcmV0"}}}))
    assert node.logged_in("10.0.0.1:5001", str(config))
    assert not node.logged_in("10.0.0.1:5000", str(config))
    config.write_text("[1, 2]")
    assert not node.logged_in("10.0.0.1:5001", str(config))
    assert node.sha256_of(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["fleet", "status", "{{ lookup('pipe', 'id') }}"], "not an Ansible host pattern"),
        (["fleet", "converge", "all", "--dry-run=maybe"], "dry-run"),
        (["fleet", "converge", "nosuchnode"], "matches no host"),
    ],
)
def test_bad_input_is_a_usage_error(workspace, args, words):
    workspace.inventory.parent.mkdir(parents=True, exist_ok=True)
    workspace.inventory.write_text("all:\n  hosts:\n    node1: {}\n")
    proc = evc(*args)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------ inference refuses stale nodes


@pytest.fixture
def pictures(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for i in range(4):
        (root / f"img{i}.jpg").write_bytes(b"\xff\xd8 image %d" % i)
    return root


def test_a_node_whose_container_is_gone_is_skipped_up_front(workspace, fleet, pictures):
    """node2's container is gone (re-imaged, stopped): the job runs on node1 only and says
    why node2 was left out, with the command that repairs it; one status run first."""
    from evc.infer import runner

    fleet.stopped.add(("node2", "faces"))
    opts = runner.RunOptions(model="faces:1.0", target="node1,node2", data=pictures)
    result = runner.run(workspace, opts)
    assert result.ok and list(result.nodes) == ["node1"]
    assert result.skipped_nodes == {
        "node2": "faces:1.0 is not running on node2: `evc fleet converge node2`"
    }
    assert [c[:2] for c in fleet.calls].count(("fleet_status.yml", "node1,node2")) == 1
    assert {c[1] for c in fleet.calls if c[0] == "infer_shard.yml"} == {"node1"}


def test_a_job_with_no_usable_node_is_refused_at_once(workspace, fleet, pictures):
    from evc.errors import UsageError
    from evc.infer import runner

    fleet.stopped |= {("node1", "faces"), ("node2", "faces")}
    opts = runner.RunOptions(model="faces:1.0", target="node1,node2", data=pictures)
    with pytest.raises(UsageError) as err:
        runner.run(workspace, opts)
    assert "faces:1.0 is not running on node1: `evc fleet converge node1`" in str(err.value)
    assert "not running on node2" in str(err.value)
    assert not [c for c in fleet.calls if c[0] == "infer_shard.yml"]
    assert not list(evcdb.workspace_db(workspace).query("SELECT id FROM jobs"))


# ------------------------------------------------------------ monitor --converge


def test_the_monitor_converges_nodes_back_online_or_missing_a_declared_model():
    from evc.logs import CollectResult
    from evc.monitor import needs_converge

    running = _container(state="running")
    samples = {
        "node1": {"containers": [running]},  # as declared
        "node2": {"containers": [_container(state="exited")]},  # its model stopped
        "node3": {"containers": []},  # back from offline: re-imaged, say
        "node4": {"containers": ["odd", running]},  # nothing declared here but faces
    }
    events = [
        {"node": "node3", "from_state": "offline", "to_state": "online"},
        {"node": "node5", "from_state": "online", "to_state": "unreachable"},
    ]
    result = CollectResult(None, 0.0, samples, 4, events)
    rows = [{**ROW, "node": n} for n in ("node1", "node2", "node4", "node5")]
    assert needs_converge(result, rows) == {
        "node2": "faces:1.0 is not running",
        "node3": "back online after being offline",
    }
