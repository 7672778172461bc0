import json
import sqlite3
import subprocess
import sys

import pytest

from evc import db as evcdb
from evc.ansible import HostResult, RunResult


def test_connect_uses_wal_and_busy_timeout(tmp_path):
    db = evcdb.connect(tmp_path / "d" / "evc.db")
    assert db.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert db.execute("pragma busy_timeout").fetchone()[0] == 30000
    assert evcdb.migrate(db) == []
    assert [r["name"] for r in db["migrations"].rows] == [n for n, _ in evcdb.MIGRATIONS]


def test_role_is_checked(tmp_path):
    db = evcdb.connect(tmp_path / "evc.db")
    with pytest.raises(sqlite3.IntegrityError):
        db["devices"].insert({"name": "a", "host": "h", "role": "boss", "added_at": 1.0})


def test_record_run_is_idempotent_and_cascades(tmp_path):
    db = evcdb.connect(tmp_path / "evc.db")
    run = RunResult(
        "ping.yml",
        "lab",
        "r1",
        "/a",
        1.0,
        2.0,
        4,
        {
            "n1": HostResult("n1", "ok", ok=1),
            "n2": HostResult("n2", "unreachable", unreachable=1, message="ssh: timed out"),
        },
    )
    evcdb.record_run(db, run)
    evcdb.record_run(db, run)
    (row,) = db["ansible_runs"].rows
    assert row["status"] == "partial" and row["hosts_failed"] == 1 and row["hosts_total"] == 2
    rows = {r["host"]: r for r in db["host_results"].rows}
    assert rows["n2"]["message"] == "ssh: timed out" and rows["n1"]["state"] == "ok"
    with db.conn:
        db.execute("delete from ansible_runs where id = 'r1'")
    assert db["host_results"].count == 0


def test_audit_and_device_json_round_trip(tmp_path):
    db = evcdb.connect(tmp_path / "evc.db")
    evcdb.audit(db, "lab up", ["lab", "up", "--nodes", "3"], 0, 1.5)
    (row,) = db["audit_log"].rows
    assert json.loads(row["args"]) == ["lab", "up", "--nodes", "3"] and row["exit_code"] == 0
    d = {"name": "a", "groups": ["x"], "labels": {"k": "v"}}
    assert evcdb.device_from_row(evcdb.device_row(d)) == d


def test_concurrent_first_opens_migrate_once(tmp_path):
    path = tmp_path / "evc.db"
    code = f"from pathlib import Path; from evc.db import connect; connect(Path({str(path)!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(4)]
    assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
    db = evcdb.connect(path)
    assert db["migrations"].count == len(evcdb.MIGRATIONS)
