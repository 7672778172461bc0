"""The workspace database: SQLite through sqlite-utils, WAL, named migrations.

Times are unix epoch seconds (UTC). Writers take the lock up front with
:func:`transaction` (``BEGIN IMMEDIATE``), so concurrent ``evc`` processes queue
for up to the busy timeout instead of failing with "database is locked".

To add tables, append ``("NNNN_name", function)`` to ``MIGRATIONS``. The function
gets the database inside the migration's transaction; use ``db.execute`` or
``db.executescript`` (sqlite-utils keeps both inside it), never
``db.conn.executescript``, which commits first.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evc import redact

if TYPE_CHECKING:  # imported where a database is opened: `evc --help` stays fast
    import sqlite_utils

BUSY_TIMEOUT_MS = 30000
_JSON_FIELDS = ("groups", "labels")


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


def _models(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE models (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            runtime TEXT NOT NULL,
            task TEXT NOT NULL,
            arch TEXT NOT NULL,
            owner TEXT,
            image TEXT NOT NULL,
            image_id TEXT NOT NULL,
            size_bytes INTEGER,
            weights_source TEXT,
            weights_digest TEXT,
            built_at REAL NOT NULL,
            build_s REAL,
            selftest TEXT,
            registry_digest TEXT,
            pushed_size INTEGER,
            pushed_at REAL,
            PRIMARY KEY (name, version)
        );
        """
    )


def _deployments(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE deployments (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            node TEXT NOT NULL,
            image TEXT NOT NULL,
            cpus REAL,
            memory TEXT,
            action TEXT NOT NULL CHECK (action IN ('deploy', 'rollback', 'undeploy')),
            state TEXT NOT NULL CHECK (state IN ('running', 'failed', 'removed', 'skipped')),
            run_id TEXT,
            started REAL NOT NULL,
            finished REAL,
            error TEXT
        );
        CREATE INDEX deployments_model_node ON deployments(model, node, id);
        """
    )


def _jobs(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            version TEXT NOT NULL,
            image TEXT NOT NULL,
            target TEXT NOT NULL,
            strategy TEXT NOT NULL,
            retries INTEGER NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            source TEXT NOT NULL,
            data_dir TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('running', 'interrupted', 'complete')),
            skipped_nodes TEXT,
            created REAL NOT NULL,
            started REAL,
            finished REAL,
            makespan_s REAL,
            items INTEGER NOT NULL,
            ok INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX jobs_created ON jobs(created);
        CREATE TABLE shards (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            node TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            items INTEGER NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('running', 'done', 'failed', 'lost', 'interrupted')),
            started REAL NOT NULL,
            finished REAL,
            error TEXT
        );
        CREATE INDEX shards_job ON shards(job_id);
        CREATE TABLE results (
            job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            item TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'ok', 'error')),
            error TEXT,
            latency_ms REAL,
            width INTEGER,
            height INTEGER,
            node TEXT,
            shard_id INTEGER REFERENCES shards(id),
            attempt INTEGER,
            PRIMARY KEY (job_id, item)
        );
        CREATE TABLE detections (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            item TEXT NOT NULL,
            label TEXT NOT NULL,
            class_id INTEGER,
            score REAL NOT NULL,
            x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL
        );
        CREATE INDEX detections_job_item ON detections(job_id, item);
        """
    )


def _telemetry(db: sqlite_utils.Database) -> None:
    """Node samples, container states and liveness changes (issue 7).

    ``metrics`` holds one row per node per sample; ``temps`` is JSON
    ``{zone: celsius}`` and ``net`` JSON ``{iface: [rx_bps, tx_bps]}``, the scalar
    columns beside them are what dashboards plot (hottest zone, sum over
    interfaces other than ``lo``). NULL means "this node has no such sensor".
    """
    db.executescript(
        """
        CREATE TABLE metrics (
            node TEXT NOT NULL,
            at REAL NOT NULL,
            cpu_pct REAL,
            load1 REAL, load5 REAL, load15 REAL,
            mem_total INTEGER, mem_used INTEGER, mem_pct REAL,
            disk_total INTEGER, disk_used INTEGER, disk_pct REAL,
            temp_max_c REAL,
            temps TEXT,
            net_rx_bps REAL, net_tx_bps REAL,
            net TEXT,
            gpu_util_pct REAL, gpu_mem_used INTEGER, gpu_mem_total INTEGER,
            npu_util_pct REAL,
            PRIMARY KEY (node, at)
        );
        CREATE INDEX metrics_at ON metrics(at);
        CREATE TABLE container_status (
            node TEXT NOT NULL,
            at REAL NOT NULL,
            name TEXT NOT NULL,
            image TEXT,
            state TEXT NOT NULL,
            restarts INTEGER,
            PRIMARY KEY (node, at, name)
        );
        CREATE INDEX container_status_at ON container_status(at);
        CREATE TABLE node_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            node TEXT NOT NULL,
            from_state TEXT NOT NULL,
            to_state TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX node_events_at ON node_events(at);
        ALTER TABLE devices ADD COLUMN missed INTEGER NOT NULL DEFAULT 0;
        """
    )


def _scenarios(db: sqlite_utils.Database) -> None:
    """Run-config runs (`evc run`) and the outcome of each of their steps (issue 9).

    Every step of the file has a row: ``not_selected`` (outside --from/--only),
    ``skipped`` (its ``when`` was false), ``not_run`` (an earlier step stopped the
    run), else ``running`` then ``ok`` or ``failed``. ``hosts`` is JSON
    ``{host: state}``, ``detail`` the JSON result of the core function.
    """
    db.executescript(
        """
        CREATE TABLE scenario_runs (
            id TEXT PRIMARY KEY,
            file TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            description TEXT,
            vars TEXT NOT NULL DEFAULT '{}',
            selection TEXT,
            state TEXT NOT NULL CHECK (state IN ('running', 'success', 'failed', 'interrupted')),
            started REAL NOT NULL,
            ended REAL,
            steps_total INTEGER NOT NULL,
            steps_ok INTEGER NOT NULL DEFAULT 0,
            steps_failed INTEGER NOT NULL DEFAULT 0,
            resume_from TEXT
        );
        CREATE INDEX scenario_runs_started ON scenario_runs(started);
        CREATE TABLE scenario_steps (
            run_id TEXT NOT NULL REFERENCES scenario_runs(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            name TEXT NOT NULL,
            kind TEXT NOT NULL,
            target TEXT,
            state TEXT NOT NULL CHECK (state IN
                ('not_selected', 'skipped', 'pending', 'running', 'ok', 'failed', 'not_run')),
            started REAL,
            ended REAL,
            summary TEXT,
            hosts TEXT,
            detail TEXT,
            PRIMARY KEY (run_id, idx)
        );
        """
    )


def _keypoints(db: sqlite_utils.Database) -> None:
    """Named points of a detection, where the model gives them (issue 20): the JSON list of
    ``{"name", "x", "y"}`` (pixels) that evc-infer writes; NULL for a model without them."""
    db.execute("ALTER TABLE detections ADD COLUMN keypoints TEXT")


_MODEL_COLUMNS = (
    "name, version, runtime, task, arch, owner, image, image_id, size_bytes, weights_source, "
    "weights_digest, built_at, build_s, selftest, registry_digest, pushed_size, pushed_at"
)


def _variants(db: sqlite_utils.Database) -> None:
    """A model version has one row per arch (issue 16), and the image index pushed under
    its version tag is recorded per version. SQLite cannot change a primary key: the
    table is copied."""
    db.executescript(
        f"""
        CREATE TABLE models_variants (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            runtime TEXT NOT NULL,
            task TEXT NOT NULL,
            arch TEXT NOT NULL,
            owner TEXT,
            image TEXT NOT NULL,
            image_id TEXT NOT NULL,
            size_bytes INTEGER,
            weights_source TEXT,
            weights_digest TEXT,
            built_at REAL NOT NULL,
            build_s REAL,
            selftest TEXT,
            registry_digest TEXT,
            pushed_size INTEGER,
            pushed_at REAL,
            PRIMARY KEY (name, version, arch)
        );
        INSERT INTO models_variants ({_MODEL_COLUMNS}) SELECT {_MODEL_COLUMNS} FROM models;
        DROP TABLE models;
        ALTER TABLE models_variants RENAME TO models;
        CREATE TABLE model_indexes (
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            digest TEXT NOT NULL,
            media_type TEXT NOT NULL,
            pushed_at REAL NOT NULL,
            PRIMARY KEY (name, version)
        );
        """
    )


# Applied in order, once each; never edit or reorder a released entry, append a new one.
MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("0001_core", _core),
    ("0002_models", _models),
    ("0003_deployments", _deployments),
    ("0004_jobs", _jobs),
    ("0005_telemetry", _telemetry),
    ("0006_scenarios", _scenarios),
    ("0007_keypoints", _keypoints),
    ("0008_variants", _variants),
]


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


def connect(path: Path, *, migrated: bool = False) -> sqlite_utils.Database:
    """Open (creating) the database: WAL, busy timeout, foreign keys on, migrated
    (unless ``migrated`` says this process has done it already)."""
    import sqlite_utils

    _create_private(path)
    db = sqlite_utils.Database(path)
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
) -> None:
    """One audit_log row: who ran which command, how it ended and how long it took.
    Secrets in ``args`` are masked (evc.redact); ``flags`` are the options that take
    no value."""
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
