"""The workspace database's tables: named migrations, applied in order by
:func:`evc.db.migrate`, each once, inside its own transaction.

To add tables, append ``("NNNN_name", function)`` to ``MIGRATIONS``. The function
gets the database inside the migration's transaction; use ``db.execute`` or
``db.executescript`` (sqlite-utils keeps both inside it), never
``db.conn.executescript``, which commits first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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


def _api(db: sqlite_utils.Database) -> None:
    """`evc serve` (issue 18): API tokens, the actions its worker runs, and their events.

    A token is stored only as the SHA-256 of its random 256-bit secret. An action is one
    long piece of work the server ran for a caller (a deploy, a job, a run-config):
    ``ref`` names what it made (a job or run id), ``host``/``pid`` the server that ran
    it, so a restart can tell its own dead actions from another server's live ones.
    ``action_events`` holds its state changes and progress lines, which the event
    stream of every server reads.
    """
    db.executescript(
        """
        CREATE TABLE api_tokens (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
            hash TEXT NOT NULL UNIQUE,
            created REAL NOT NULL,
            expires REAL,
            revoked REAL,
            last_used REAL
        );
        CREATE TABLE actions (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            who TEXT,
            state TEXT NOT NULL CHECK (state IN
                ('queued', 'running', 'ok', 'failed', 'cancelled', 'interrupted')),
            ref TEXT,
            created REAL NOT NULL,
            started REAL,
            ended REAL,
            summary TEXT,
            result TEXT,
            host TEXT,
            pid INTEGER
        );
        CREATE INDEX actions_created ON actions(created);
        CREATE INDEX actions_ref ON actions(ref);
        CREATE TABLE action_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            action_id TEXT NOT NULL REFERENCES actions(id) ON DELETE CASCADE,
            at REAL NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('state', 'log', 'status')),
            message TEXT NOT NULL
        );
        CREATE INDEX action_events_action ON action_events(action_id, id);
        CREATE INDEX action_events_at ON action_events(at);
        """
    )


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


def _built_on(db: sqlite_utils.Database) -> None:
    """Where each variant was built: a builder device's name, "emulated" (qemu on the
    controller) or "controller" (natively there)."""
    db.execute("ALTER TABLE models ADD COLUMN built_on TEXT")


def _job_mode(db: sqlite_utils.Database) -> None:
    """How a job's shards reach the nodes: push (over SSH) or pull (the queue, issue 19)."""
    db.execute("ALTER TABLE jobs ADD COLUMN mode TEXT NOT NULL DEFAULT 'push'")


# Applied in order, once each; never edit or reorder a released entry, append a new one.
MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("0001_core", _core),
    ("0002_models", _models),
    ("0003_deployments", _deployments),
    ("0004_jobs", _jobs),
    ("0005_telemetry", _telemetry),
    ("0006_scenarios", _scenarios),
    ("0007_keypoints", _keypoints),
    ("0008_api", _api),
    ("0009_variants", _variants),
    ("0010_built_on", _built_on),
    ("0011_job_mode", _job_mode),
]
