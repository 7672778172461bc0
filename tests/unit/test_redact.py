"""No secret in what EVC records: the audit log, run-config runs, host messages.

Each test plants secrets through the real CLI and then reads the database file and
its -wal byte for byte."""

import json

import pytest

from evc import db as evcdb
from evc import redact
from tests.conftest import evc, files_holding


@pytest.mark.parametrize(
    "name, secret",
    [("password", True), ("--grafana-token", True), ("api_token", True), ("apiKey", True),
     ("DB_PASSWD", True), ("client-secret", True), ("--copy-key", True),
     ("--key-file", False), ("--token-env", False), ("--password-stdin", False),
     ("monkey", False), ("keys", False), ("version", False), ("", False)],
)  # fmt: skip
def test_the_secret_name_rule(name, secret):
    assert redact.secret_name(name) is secret


def test_args_mask_values_of_secret_options_and_assignments_but_not_after_a_flag():
    from evc.cli import _flags

    argv = ["device", "add", "n1", "h", "--copy-key", "kept", "--token", "T1",
            "--grafana-token=T2", "--var", "api_token=T3", "--var=db_password=T4",
            "--url", "https://user:T5@grafana:3000/x", "--key-file", "/k/id",
            "--var", "v=1"]  # fmt: skip
    flags = _flags(argv)
    assert "--copy-key" in flags and "--json" in flags
    assert redact.args(argv, flags) == [
        "device", "add", "n1", "h", "--copy-key", "kept", "--token", "***",
        "--grafana-token=***", "--var", "api_token=***", "--var=db_password=***",
        "--url", "https://***@grafana:3000/x", "--key-file", "/k/id",
        "--var", "v=1"]  # fmt: skip


def test_data_masks_keys_urls_and_shows_environment_values_as_references():
    env = {"s3cr3t-value": "${env.T}", "lab": "${env.GROUP}"}
    stored = redact.data(
        {"token": "x", "password_stdin": True, "key_file": "/k", "group": "lab",
         "nested": [{"url": "git+ssh://me:pw@host/r", "path": "/out/s3cr3t-value/a"}],
         "label": "evc-lab"},
        env,
    )  # fmt: skip
    assert stored == {
        "token": "***", "password_stdin": True, "key_file": "/k", "group": "${env.GROUP}",
        "nested": [{"url": "git+ssh://***@host/r", "path": "/out/${env.T}/a"}],
        "label": "evc-lab",  # a short environment value is replaced only when whole
    }  # fmt: skip


def test_audit_log_never_stores_a_planted_secret(workspace):
    secrets = ["audT0ken1", "audT0ken2", "audPassw3", "audUrlPw4", "audLabel5"]
    evc("device", "list", "--token", secrets[0], check=2)  # refused, and still audited
    evc("device", "list", f"--grafana-token={secrets[1]}", check=2)
    evc("run", "validate", "nothing.yaml", "--var", f"db_password={secrets[2]}", check=2)
    evc("grafana", "push", "--url", f"http://admin:{secrets[3]}@127.0.0.1:9",
        env={"GRAFANA_TOKEN": "x"}, check=1)  # fmt: skip
    evc("device", "list", "--label", f"api_key={secrets[4]}", check=2)
    db = evcdb.workspace_db(workspace)
    rows = list(db.query("SELECT command, args FROM audit_log ORDER BY id"))
    assert len(rows) == 5
    assert json.loads(rows[0]["args"]) == ["device", "list", "--token", "***"]
    assert "http://***@127.0.0.1:9" in json.loads(rows[3]["args"])
    assert files_holding(workspace, *secrets) == []


def test_run_records_never_store_a_planted_secret(workspace, tmp_path):
    from_env = "envS3cretValue"
    path = tmp_path / "leaky.yaml"
    path.write_text(f"""\
version: 1
vars:
  api_token: varT0kenValue
  mirror: https://mirror-user:urlPassw0rd@mirror.example/simple
  pulled: ${{env.EVC_TEST_SECRET}}
  embedded: "pre-${{env.EVC_TEST_SECRET}}-post"
steps:
  - do: grafana.build
    with: {{out: "{tmp_path}/g-${{env.EVC_TEST_SECRET}}"}}
""")
    env = {"EVC_TEST_SECRET": from_env}
    run = json.loads(evc("run", path, "--json", "--var", "cli_token=cliT0kenValue",
                         env=env, check=2).stdout or "{}")  # fmt: skip
    assert run == {}  # cli_token is not declared: refused, yet audited
    run = json.loads(evc("run", path, "--json", env=env, check=0).stdout)
    assert run["vars"] == {
        "api_token": "***",
        "mirror": "https://***@mirror.example/simple",
        "pulled": "${env.EVC_TEST_SECRET}",
        "embedded": "pre-${env.EVC_TEST_SECRET}-post",
    }
    (step,) = run["steps"]
    assert step["state"] == "ok" and "g-${env.EVC_TEST_SECRET}" in step["summary"]
    assert all("g-${env.EVC_TEST_SECRET}/" in p for p in step["detail"])
    assert (tmp_path / f"g-{from_env}").is_dir()  # the step itself used the real value
    secrets = [from_env, "varT0kenValue", "urlPassw0rd", "cliT0kenValue"]
    assert files_holding(workspace, *secrets) == []


def test_host_messages_are_stored_without_url_user_info(tmp_path):
    from evc.ansible import HostResult, RunResult

    run = RunResult(
        playbook="p.yml", target="all", ident="r1", artifacts_dir="/a", started=1.0,
        ended=2.0, rc=2,
        hosts={"n1": HostResult("n1", "failed", failed=1,
                                message="pull https://evc:hostPw0rd@reg:5000/v2/ failed")},
    )  # fmt: skip
    db = evcdb.connect(tmp_path / "evc.db")
    evcdb.record_run(db, run)
    (row,) = db["host_results"].rows
    assert row["message"] == "pull https://***@reg:5000/v2/ failed"
