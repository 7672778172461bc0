"""The workspace database: SQLite through sqlite-utils, WAL, named migrations.

Later capabilities add tables by appending to ``MIGRATIONS``; each applied
migration is recorded in the ``migrations`` table. Times are unix epoch seconds.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlite_utils


def _core(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE devices (
            name TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            port INTEGER NOT NULL DEFAULT 22,
            user TEXT NOT NULL DEFAULT 'root',
            role TEXT NOT NULL DEFAULT 'worker' CHECK (role IN ('builder', 'worker')),
            groups TEXT NOT NULL DEFAULT '[]',
            labels TEXT NOT NULL DEFAULT '{}',
            arch TEXT, os TEXT, kernel TEXT,
            cpu_count REAL, mem_bytes INTEGER, disk_bytes INTEGER,
            accelerator TEXT, docker_version TEXT,
            lat REAL, lon REAL,
            added_at REAL NOT NULL,
            last_seen REAL,
            status TEXT NOT NULL DEFAULT 'unknown'
        );
        CREATE INDEX devices_status ON devices(status);
        CREATE TABLE ansible_runs (
            id TEXT PRIMARY KEY,
            playbook TEXT NOT NULL,
            target TEXT NOT NULL,
            started REAL NOT NULL,
            ended REAL,
            status TEXT NOT NULL,
            rc INTEGER,
            artifacts_dir TEXT,
            hosts_total INTEGER,
            hosts_failed INTEGER
        );
        CREATE INDEX ansible_runs_started ON ansible_runs(started);
        CREATE TABLE host_results (
            run_id TEXT NOT NULL REFERENCES ansible_runs(id) ON DELETE CASCADE,
            host TEXT NOT NULL,
            state TEXT NOT NULL,
            ok INTEGER, changed INTEGER, failed INTEGER, unreachable INTEGER, skipped INTEGER,
            failed_task TEXT,
            message TEXT,
            PRIMARY KEY (run_id, host)
        );
        CREATE INDEX host_results_host ON host_results(host);
        CREATE TABLE audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            user TEXT,
            command TEXT NOT NULL,
            args TEXT NOT NULL DEFAULT '[]',
            exit_code INTEGER,
            duration_s REAL
        );
        CREATE INDEX audit_log_at ON audit_log(at);
        """
    )


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("0001_core", _core),
]


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply pending migrations in order, each recorded; returns the names applied now."""
    conn = db.conn
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    done = {r[0] for r in conn.execute("SELECT name FROM migrations")}
    if all(name in done for name, _ in MIGRATIONS):
        return []
    applied = []
    conn.execute("BEGIN IMMEDIATE")  # serialises concurrent first opens
    try:
        done = {r[0] for r in conn.execute("SELECT name FROM migrations")}
        for name, apply in MIGRATIONS:
            if name not in done:
                apply(db)
                conn.execute("INSERT INTO migrations VALUES (?, ?)", [name, time.time()])
                applied.append(name)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied


def connect(path: Path) -> sqlite_utils.Database:
    """Open (creating) the database with WAL and a busy timeout, migrated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite_utils.Database(path)
    db.conn.isolation_level = None  # explicit transactions only (BEGIN IMMEDIATE above)
    db.execute("PRAGMA busy_timeout = 30000")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA synchronous = NORMAL")
    migrate(db)
    db.conn.isolation_level = ""  # back to the sqlite3 default for `with db.conn:`
    return db


def workspace_db(ws) -> sqlite_utils.Database:
    return connect(ws.root / "db" / "evc.db")


def record_run(db: sqlite_utils.Database, run) -> None:
    """One ansible_runs row and one host_results row per host (idempotent)."""
    with db.conn:
        db["ansible_runs"].upsert(
            {
                "id": run.ident,
                "playbook": run.playbook,
                "target": run.target,
                "started": run.started,
                "ended": run.ended,
                "status": run.status,
                "rc": run.rc,
                "artifacts_dir": run.artifacts_dir,
                "hosts_total": len(run.hosts),
                "hosts_failed": len(run.failed_hosts),
            },
            pk="id",
        )
        db["host_results"].upsert_all(
            (
                {
                    "run_id": run.ident,
                    "host": r.host,
                    "state": r.state,
                    "ok": r.ok,
                    "changed": r.changed,
                    "failed": r.failed,
                    "unreachable": r.unreachable,
                    "skipped": r.skipped,
                    "failed_task": r.failed_task,
                    "message": r.message,
                }
                for r in run.hosts.values()
            ),
            pk=("run_id", "host"),
        )


def audit(
    db: sqlite_utils.Database, command: str, args: list[str], exit_code: int, duration_s: float
) -> None:
    try:
        user = getpass.getuser()
    except Exception:
        user = None
    with db.conn:
        db["audit_log"].insert(
            {
                "at": time.time(),
                "user": user,
                "command": command,
                "args": json.dumps(args),
                "exit_code": exit_code,
                "duration_s": round(duration_s, 3),
            }
        )


def device_row(d: dict[str, Any]) -> dict[str, Any]:
    """A device dict as stored: groups and labels as JSON text."""
    out = dict(d)
    for key in ("groups", "labels"):
        if key in out and not isinstance(out[key], str):
            out[key] = json.dumps(out[key], sort_keys=True)
    return out


def device_from_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("groups", "labels"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out
