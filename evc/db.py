"""The workspace database: SQLite through sqlite-utils, WAL, named migrations.

Times are unix epoch seconds (UTC). Writers take the lock up front with
:func:`transaction` (``BEGIN IMMEDIATE``), so concurrent ``evc`` processes queue
for up to the busy timeout instead of failing with "database is locked".

The tables are named migrations in :mod:`evc.schema`.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evc import redact
from evc.schema import MIGRATIONS

if TYPE_CHECKING:  # imported where a database is opened: `evc --help` stays fast
    import sqlite_utils

BUSY_TIMEOUT_MS = 30000
_JSON_FIELDS = ("groups", "labels")


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error); a savepoint when nested."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")  # waits up to busy_timeout for the write lock
    try:
        yield db
        db.conn.execute("COMMIT")
    except BaseException:
        db.rollback()
        raise


def _applied(db: sqlite_utils.Database) -> set[str]:
    try:
        return {row[0] for row in db.conn.execute("SELECT name FROM migrations")}
    except sqlite3.OperationalError:  # no migrations table yet
        return set()


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply pending migrations in order, each recorded; returns the names applied now."""
    if {name for name, _ in MIGRATIONS} <= _applied(db):
        return []
    applied = []
    with transaction(db):
        db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        done = _applied(db)  # again under the lock: another process may have just migrated
        for name, apply in MIGRATIONS:
            if name not in done:
                apply(db)
                db.execute("INSERT INTO migrations VALUES (?, ?)", [name, time.time()])
                applied.append(name)
    return applied


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it (SQLite gives its -wal and
    -shm files the database file's permissions), and make the files of a database
    that an older EVC created world-readable 0600 again. Group access without world
    access is left alone: that is a deliberate share (a system Grafana's group)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        try:
            mode = file.stat().st_mode
            if mode & 0o007:
                os.chmod(file, mode & 0o700)
        except (FileNotFoundError, PermissionError):  # gone; or another user's to fix
            pass


_OPTIONAL = ("numpy", "pandas")  # what sqlite-utils imports if installed, for their types


def _sqlite_utils():
    """sqlite_utils, imported without numpy and pandas unless they are loaded already.

    sqlite-utils imports both when installed, only to map their scalar types to column
    types. EVC stores none (rows come from JSON and the CLI), and numpy is in the
    controller's environment for model export alone: importing it cost every command
    that opens the database 0.17 CPU-s on a quiet machine, 0.3-0.4 s under load.
    """
    hide = [m for m in _OPTIONAL if m not in sys.modules and "sqlite_utils" not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # type: ignore[assignment]  # `import NAME` raises ImportError
    try:
        import sqlite_utils
    finally:
        for name in hide:
            del sys.modules[name]
    return sqlite_utils


def connect(path: Path, *, migrated: bool = False) -> sqlite_utils.Database:
    """Open (creating) the database: WAL, busy timeout, foreign keys on, migrated
    (unless ``migrated`` says this process has done it already)."""
    _create_private(path)
    db = _sqlite_utils().Database(path)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # first: switching to WAL may wait
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA synchronous = NORMAL")
    if not migrated:
        migrate(db)
    return db


_migrated: set[Path] = set()  # database files this process has migrated
_migrated_lock = threading.Lock()


def workspace_db(ws) -> sqlite_utils.Database:
    """A connection to the workspace database, migrated once per process.

    A new connection per call, not one kept for the process: sqlite-utils hands rows out
    from generators, and a half-read one left alive anywhere (a local in a failed test's
    frame) would pin a long-lived connection's read snapshot, so it stops seeing other
    processes' writes; and a raw read of the file in the same process (closing any fd on
    it drops SQLite's POSIX locks) could let another writer corrupt it. Opening costs a
    fraction of a millisecond; migrating is what is done once.
    """
    path = (ws.root / "db" / "evc.db").resolve()
    with _migrated_lock:
        db = connect(path, migrated=path in _migrated and path.exists())
        _migrated.add(path)
    return db


def _upsert(
    db: sqlite_utils.Database, table: str, row: dict[str, Any], pk: tuple[str, ...]
) -> None:
    """INSERT ... ON CONFLICT DO UPDATE: never REPLACE, which would cascade-delete children."""
    cols = ", ".join(f'"{c}"' for c in row)
    values = ", ".join(f":{c}" for c in row)
    sets = ", ".join(f'"{c}" = excluded."{c}"' for c in row if c not in pk)
    db.execute(
        f'INSERT INTO "{table}" ({cols}) VALUES ({values}) '
        f"ON CONFLICT ({', '.join(pk)}) DO UPDATE SET {sets}",
        row,
    )


def record_run(db: sqlite_utils.Database, run) -> None:
    """One ansible_runs row and one host_results row per host, in one transaction (idempotent)."""
    run_row = {
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
    }
    with transaction(db):
        _upsert(db, "ansible_runs", run_row, ("id",))
        for r in run.hosts.values():
            host_row = {
                "run_id": run.ident,
                "host": r.host,
                "state": r.state,
                "ok": r.ok,
                "changed": r.changed,
                "failed": r.failed,
                "unreachable": r.unreachable,
                "skipped": r.skipped,
                "failed_task": r.failed_task,
                "message": r.message and redact.text(r.message),
            }
            _upsert(db, "host_results", host_row, ("run_id", "host"))


def audit(
    db: sqlite_utils.Database,
    command: str,
    args: list[str],
    exit_code: int,
    duration_s: float,
    *,
    flags: Collection[str] = (),
    user: str | None = None,
) -> None:
    """One audit_log row: who ran which command, how it ended and how long it took.
    Secrets in ``args`` are masked (evc.redact); ``flags`` are the options that take
    no value; ``user`` defaults to the OS user (the API gives ``token:NAME``)."""
    if user is None:
        try:
            user = getpass.getuser()
        except Exception:
            user = None
    with transaction(db):
        db.execute(
            "INSERT INTO audit_log (at, user, command, args, exit_code, duration_s) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                time.time(),
                user,
                redact.text(command),
                json.dumps(redact.args(list(args), flags)),
                exit_code,
                round(duration_s, 3),
            ],
        )


def device_row(d: dict[str, Any]) -> dict[str, Any]:
    """A device dict as stored: groups and labels as JSON text."""
    out = dict(d)
    for key in _JSON_FIELDS:
        if key in out and not isinstance(out[key], str):
            out[key] = json.dumps(out[key], sort_keys=True)
    return out


def device_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored device row with groups and labels parsed back from JSON."""
    out = dict(row)
    for key in _JSON_FIELDS:
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out
