import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlite_utils

from evc import db as evcdb
from evc.ansible import HostResult, RunResult

REPO = Path(__file__).resolve().parents[2]


def _run(ident="r1", rc=4, message="ssh: timed out"):
    return RunResult(
        playbook="ping.yml",
        target="lab",
        ident=ident,
        artifacts_dir="/a",
        started=1.0,
        ended=2.5,
        rc=rc,
        hosts={
            "n1": HostResult("n1", "ok", ok=1, outputs={"ping": {"ping": "pong"}}),
            "n2": HostResult(
                "n2", "unreachable", unreachable=1, failed_task="ping", message=message
            ),
        },
    )


def test_connect_creates_a_wal_db_and_migrates_once(tmp_path):
    path = tmp_path / "d" / "evc.db"
    db = evcdb.connect(path)
    assert path.is_file()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    tables = {
        "devices",
        "ansible_runs",
        "host_results",
        "audit_log",
        "models",
        "deployments",
        "jobs",
        "shards",
        "results",
        "detections",
    }
    assert tables <= set(db.table_names())
    assert [r["name"] for r in db["migrations"].rows] == [n for n, _ in evcdb.MIGRATIONS]
    assert [n for n, _ in evcdb.MIGRATIONS][0] == "0001_core"
    assert evcdb.migrate(db) == []
    assert evcdb.migrate(evcdb.connect(path)) == []
    assert db["migrations"].count == len(evcdb.MIGRATIONS)


def test_migrate_reports_what_it_applied(tmp_path):
    db = sqlite_utils.Database(tmp_path / "raw.db")
    assert evcdb.migrate(db) == [n for n, _ in evcdb.MIGRATIONS]
    assert evcdb.migrate(db) == []
    assert not db.conn.in_transaction


def test_device_defaults_and_role_check(tmp_path):
    db = evcdb.connect(tmp_path / "evc.db")
    db["devices"].insert({"name": "b", "host": "10.0.0.2", "role": "builder", "added_at": 1.0})
    row = db["devices"].get("b")
    assert (row["port"], row["user"], row["status"]) == (22, "root", "unknown")
    assert (row["groups"], row["labels"]) == ("[]", "{}")
    with pytest.raises(sqlite3.IntegrityError):
        db["devices"].insert({"name": "a", "host": "h", "role": "boss", "added_at": 1.0})
    assert db["devices"].count == 1


def test_record_run_writes_rows_and_is_idempotent(tmp_path):
    db = evcdb.connect(tmp_path / "evc.db")
    evcdb.record_run(db, _run())
    evcdb.record_run(db, _run(message="ssh: no route to host"))  # same ident: update
    (row,) = db["ansible_runs"].rows
    assert row["id"] == "r1" and row["playbook"] == "ping.yml" and row["target"] == "lab"
    assert (row["started"], row["ended"], row["rc"]) == (1.0, 2.5, 4)
    assert row["status"] == "partial" and row["hosts_failed"] == 1 and row["hosts_total"] == 2
    rows = {r["host"]: r for r in db["host_results"].rows}
    assert sorted(rows) == ["n1", "n2"]
    assert rows["n1"]["state"] == "ok" and rows["n1"]["ok"] == 1 and rows["n1"]["message"] is None
    assert rows["n2"]["state"] == "unreachable" and rows["n2"]["unreachable"] == 1
    assert rows["n2"]["failed_task"] == "ping"
    assert rows["n2"]["message"] == "ssh: no route to host"
    assert "outputs" not in db["host_results"].columns_dict


def test_record_run_is_one_transaction(tmp_path):
    db = evcdb.connect(tmp_path / "evc.db")
    run = _run()
    run.hosts["n2"].state = None  # NOT NULL: the second host row fails
    with pytest.raises(sqlite3.IntegrityError):
        evcdb.record_run(db, run)
    assert db["ansible_runs"].count == 0 and db["host_results"].count == 0
    assert not db.conn.in_transaction


def test_deleting_a_run_cascades_to_host_results(tmp_path):
    db = evcdb.connect(tmp_path / "evc.db")
    evcdb.record_run(db, _run("r1"))
    evcdb.record_run(db, _run("r2"))
    assert db["host_results"].count == 4
    with evcdb.transaction(db):
        db.execute("DELETE FROM ansible_runs WHERE id = ?", ["r1"])
    assert {r["run_id"] for r in db["host_results"].rows} == {"r2"}


def test_transaction_rolls_back_on_error(tmp_path):
    db = evcdb.connect(tmp_path / "evc.db")
    with pytest.raises(RuntimeError):
        with evcdb.transaction(db):
            db.execute("INSERT INTO devices (name, host, added_at) VALUES ('a', 'h', 1.0)")
            raise RuntimeError("boom")
    assert db["devices"].count == 0 and not db.conn.in_transaction


def test_audit_writes_a_row(tmp_path):
    db = evcdb.connect(tmp_path / "evc.db")
    before = time.time()
    evcdb.audit(db, "lab up", ["lab", "up", "--nodes", "3"], 0, 1.5)
    evcdb.audit(db, "device add", [], 2, 0.25)
    first, second = db["audit_log"].rows_where(order_by="id")
    assert first["command"] == "lab up" and first["exit_code"] == 0
    assert json.loads(first["args"]) == ["lab", "up", "--nodes", "3"]
    assert first["duration_s"] == 1.5 and before <= first["at"] <= time.time()
    assert first["user"] is None or isinstance(first["user"], str)
    assert json.loads(second["args"]) == [] and second["exit_code"] == 2


def test_device_json_round_trip(tmp_path):
    d = {"name": "a", "host": "h", "added_at": 1.0, "groups": ["x", "y"], "labels": {"k": "v"}}
    row = evcdb.device_row(d)
    assert isinstance(row["groups"], str) and json.loads(row["labels"]) == {"k": "v"}
    assert d["groups"] == ["x", "y"]  # input left alone
    assert evcdb.device_from_row(row) == d
    db = evcdb.connect(tmp_path / "evc.db")
    db["devices"].insert(row)
    assert evcdb.device_from_row(db["devices"].get("a"))["groups"] == ["x", "y"]


def test_concurrent_first_opens_and_writes(tmp_path):
    path = tmp_path / "new" / "evc.db"
    start = time.time() + 1.5  # every process opens the fresh file at the same moment
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from evc.ansible import HostResult, RunResult\n"
        "from evc.db import audit, connect, record_run\n"
        f"time.sleep(max(0.0, {start!r} - time.time()))\n"
        f"db = connect(Path({str(path)!r}))\n"
        "for i in range(10):\n"
        "    hosts = {'h': HostResult('h', 'ok', ok=1)}\n"
        "    ident = f'{sys.argv[1]}-{i}'\n"
        "    record_run(db, RunResult('p', 'all', ident, '/a', 1.0, 2.0, 0, hosts))\n"
        "    audit(db, 'x', [sys.argv[1]], 0, 0.1)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(n)], cwd=REPO, stderr=subprocess.PIPE, text=True
        )
        for n in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    db = evcdb.connect(path)
    assert [r["name"] for r in db["migrations"].rows] == [n for n, _ in evcdb.MIGRATIONS]
    assert db["ansible_runs"].count == 40 and db["host_results"].count == 40
    assert db["audit_log"].count == 40


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mode & 0o777 for p in folder.glob("evc.db*")}


def test_database_and_wal_files_are_private_under_a_permissive_umask(tmp_path):
    old = os.umask(0o022)
    try:
        db = evcdb.connect(tmp_path / "evc.db")
        evcdb.audit(db, "x", [], 0, 0.1)  # the -wal and -shm exist while a writer is open
        assert _modes(tmp_path) == {"evc.db": 0o600, "evc.db-wal": 0o600, "evc.db-shm": 0o600}
    finally:
        os.umask(old)


def test_a_world_readable_database_from_an_older_evc_is_tightened_on_open(tmp_path):
    path = tmp_path / "evc.db"
    old = sqlite3.connect(path)  # as an older EVC made it: 0644, and left open (-wal, -shm)
    old.execute("PRAGMA journal_mode = WAL")
    old.execute("CREATE TABLE t (x)")
    old.execute("INSERT INTO t VALUES (1)")
    old.commit()
    for p in tmp_path.glob("evc.db*"):
        p.chmod(0o644)
    assert set(_modes(tmp_path).values()) == {0o644} and len(_modes(tmp_path)) == 3
    first = evcdb.connect(path)  # held open: the -wal and -shm stay for the checks below
    assert _modes(tmp_path) == {"evc.db": 0o600, "evc.db-wal": 0o600, "evc.db-shm": 0o600}
    old.close()
    for p in tmp_path.glob("evc.db*"):  # shared with a group on purpose: kept
        p.chmod(0o640)
    second = evcdb.connect(path)
    assert _modes(tmp_path) == {"evc.db": 0o640, "evc.db-wal": 0o640, "evc.db-shm": 0o640}
    second.close()
    first.close()


def test_opening_the_database_does_not_import_numpy(tmp_path):
    """sqlite-utils would import numpy (installed here for model export) on every
    command that opens the database: 0.17 CPU-s of start-up (more under load) for
    nothing. numpy stays importable afterwards, for the code that needs it."""
    code = (
        "import sys\nfrom pathlib import Path\nfrom evc import db\n"
        f"d = db.connect(Path({str(tmp_path / 'evc.db')!r}))\n"
        "d['t'].insert({'a': 1})\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
        "import numpy\nprint(numpy.int64(3) + 1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "4"
