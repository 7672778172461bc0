"""ansible-runner events -> per-host results (pure parsing, no Ansible run)."""

import json

from evc.ansible import HostResult, RunResult, _Collector, scrub_command_file
from evc.progress import SILENT


def _ev(kind, host=None, **data):
    return {"event": kind, "event_data": {"host": host, **data}}


def _run(events, hosts=("a", "b", "c", "d")):
    c = _Collector(list(hosts), SILENT)
    for e in events:
        c(e)
    return RunResult("p.yml", "all", "id", "/x", 0.0, 1.0, 2, c.hosts)


def test_states_messages_and_outputs():
    run = _run(
        [
            _ev("playbook_on_task_start", task="probe"),
            _ev("runner_on_ok", "a", task="probe", res={"stdout": "20.10", "invocation": {}}),
            _ev("runner_on_failed", "b", task="probe", res={"msg": "non-zero return code"}),
            _ev("runner_on_unreachable", "c", task="probe", res={"msg": "ssh: timed out"}),
            _ev("runner_on_failed", "d", task="probe", res={"msg": "x"}, ignore_errors=True),
            _ev(
                "playbook_on_stats",
                ok={"a": 1, "d": 1},
                changed={"d": 1},
                failures={"b": 1},
                dark={"c": 1},
            ),
        ]
    )
    assert {h: r.state for h, r in run.hosts.items()} == {
        "a": "ok",
        "b": "failed",
        "c": "unreachable",
        "d": "changed",
    }
    assert run.hosts["a"].outputs == {"probe": {"stdout": "20.10"}}
    assert run.hosts["b"].message == "non-zero return code"
    assert run.hosts["c"].failed_task == "probe"
    assert run.hosts["d"].message is None
    assert run.failed_hosts == ["b", "c"]
    assert run.status == "partial" and not run.ok
    assert run.to_dict()["status"] == "partial"


def test_a_script_tasks_json_is_read_and_anything_else_fails_the_host():
    """Planted: a node whose telemetry script prints a list, or text, rather than the
    object the controller reads; it fails, saying what it printed."""
    good = HostResult("n1", outputs={"telemetry": {"stdout": '{"sample": {"cpu_pct": 5}}\n'}})
    assert good.printed("telemetry") == {"sample": {"cpu_pct": 5}} and good.state == "ok"
    assert good.printed("facts") is None and good.state == "ok"  # did not run
    for out in ("[1, 2]", "Traceback (most recent call last):"):
        bad = HostResult("n2", outputs={"telemetry": {"stdout": out}})
        assert bad.printed("telemetry") is None
        assert (bad.state, bad.message) == ("failed", f"telemetry: printed no JSON object: {out}")


def test_all_fine_is_success_and_all_down_is_error():
    ok = _run([_ev("playbook_on_stats", ok={"a": 1})], hosts=["a"])
    ok.rc = 0
    assert ok.status == "success" and ok.ok
    down = _run([_ev("playbook_on_stats", dark={"a": 1})], hosts=["a"])
    assert down.status == "error"


def test_message_is_last_line_of_stderr_when_no_msg():
    run = _run(
        [
            _ev("runner_on_failed", "a", task="t", res={"stderr": "first\nthe real reason"}),
            _ev("playbook_on_stats", failures={"a": 1}),
        ],
        hosts=["a"],
    )
    assert run.hosts["a"].message == "the real reason"


def test_scrub_command_file_keeps_only_evc_settings(tmp_path):
    (tmp_path / "command").write_text(
        json.dumps(
            {
                "command": ["ansible-playbook"],
                "cwd": "/",
                "env": {
                    "PATH": "/bin",
                    "ANSIBLE_FORKS": "3",
                    "AWS_SECRET_ACCESS_KEY": "s3cr3t",
                    "GRAFANA_TOKEN": "t0k3n",
                },
            }
        )
    )
    scrub_command_file(tmp_path)
    data = json.loads((tmp_path / "command").read_text())
    assert data["env"] == {"PATH": "/bin", "ANSIBLE_FORKS": "3"}
    assert data["command"] == ["ansible-playbook"]
    assert (tmp_path / "command").stat().st_mode & 0o777 == 0o600


def test_command_failure_reports_stderr_not_the_generic_message():
    run = _run(
        [
            _ev(
                "runner_on_failed",
                "a",
                task="pull",
                res={
                    "msg": "non-zero return code",
                    "rc": 1,
                    "stderr": "Error response from daemon: x509: certificate signed by unknown "
                    "authority",
                },
            ),
            _ev(
                "runner_on_failed",
                "b",
                task="t",
                res={"msg": "Missing sudo password", "stderr": "noise"},
            ),
            _ev("playbook_on_stats", failures={"a": 1, "b": 1}),
        ],
        hosts=["a", "b"],
    )
    assert run.hosts["a"].message.endswith("certificate signed by unknown authority")
    assert run.hosts["b"].message == "Missing sudo password"


def test_closing_one_nodes_connections_leaves_the_others(workspace):
    from evc.connections import close_connections, control_dir

    cp = control_dir(workspace)
    for name in ("172.30.0.2-22-root", "172.30.0.20-22-root", "172.30.0.3-2222-pi"):
        (cp / name).touch()  # stand-ins for ControlPersist sockets (%h-%p-%r)
    assert close_connections(workspace, "172.30.0.2") == 1
    assert sorted(p.name for p in cp.iterdir()) == ["172.30.0.20-22-root", "172.30.0.3-2222-pi"]
    assert close_connections(workspace) == 2
    assert not cp.exists()  # lab down leaves no folder behind in /tmp
