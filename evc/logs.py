"""Node telemetry: collection rounds, bulk ingestion, liveness, queries, export, prune.

One round runs ``playbooks/telemetry.yml`` (one task per node, the script
``playbooks/files/evc_telemetry.py``), stores one ``metrics`` row per node that
answered plus its EVC containers in ``container_status``, and applies the
round's outcome to device liveness (:func:`evc.devices.record_liveness`). Nodes
that are containers themselves (the lab) report their own cgroup's CPU and
memory, not the host's. Every write is a short ``BEGIN IMMEDIATE`` transaction,
so a monitor and other ``evc`` processes share the database without "database
is locked".
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from evc import db as evcdb
from evc import devices
from evc.ansible import RunResult, run_playbook
from evc.config import Workspace
from evc.errors import Result, UsageError
from evc.names import Target
from evc.options import TARGET_HELP, Options, arg, opt
from evc.progress import SILENT, Progress

PLAYBOOK = "telemetry.yml"
TASK = "telemetry"
TASK_TIMEOUT_S = 60  # a hung sensor tool cannot stall a round longer than this
METRIC_COLUMNS = (
    "node", "at", "cpu_pct", "load1", "load5", "load15",
    "mem_total", "mem_used", "mem_pct", "disk_total", "disk_used", "disk_pct",
    "temp_max_c", "temps", "net_rx_bps", "net_tx_bps", "net",
    "gpu_util_pct", "gpu_mem_used", "gpu_mem_total", "npu_util_pct",
)  # fmt: skip
_ROW = itemgetter(*METRIC_COLUMNS)
_TEMPS, _NET = METRIC_COLUMNS.index("temps"), METRIC_COLUMNS.index("net")
_INSERT_METRICS = (
    f"INSERT INTO metrics ({', '.join(METRIC_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(METRIC_COLUMNS))}) ON CONFLICT DO NOTHING"
)
_to_json = json.JSONEncoder(separators=(",", ":")).encode
_INSERT_CONTAINERS = (
    "INSERT INTO container_status (node, at, name, image, state, restarts) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
PRUNED_TABLES = ("metrics", "container_status", "node_events", "action_events")
PRUNE_BATCH = 5000  # rows per delete transaction: other writers wait milliseconds, not minutes
EXPORT_FORMATS = ("csv",)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.I)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, option: str = "duration") -> float:
    """Seconds in '90s', '15m', '1h', '30d', '2w' (a bare number is seconds); > 0."""
    m = _DURATION.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise UsageError(
            f"{option} {text!r}: expected a positive duration such as 90s, 15m, 1h, 30d or 2w "
            "(s seconds, m minutes, h hours, d days, w weeks)."
        )
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def _with_json(row: tuple) -> list:
    out = list(row)
    for i in (_TEMPS, _NET):
        if out[i] is not None and not isinstance(out[i], str):
            out[i] = _to_json(out[i])
    return out


def ingest(db, samples: list[dict]) -> int:
    """Store samples in one transaction; returns the metrics rows inserted.

    Each sample is a dict with ``node``, ``at`` and any metrics columns (missing
    ones are NULL; ``temps`` and ``net`` are JSON text, as nodes send them, or
    dicts, encoded here) plus an
    optional ``containers`` list of {name, image, state, restarts}. A sample
    whose (node, at) is already stored is skipped, with its containers.
    """
    rows, containers = [], []
    for s in samples:  # the hot loop of bulk ingestion: keep it lean
        try:
            row = _ROW(s)  # a sample from collect() has every column
        except KeyError:
            row = tuple(map(s.get, METRIC_COLUMNS))
        temps, net = row[_TEMPS], row[_NET]  # JSON text from nodes; dicts get encoded
        if (temps is not None and temps.__class__ is not str) or (
            net is not None and net.__class__ is not str
        ):
            row = _with_json(row)
        rows.append(row)
        for c in s.get("containers") or ():
            containers.append(
                (s["node"], s["at"], c["name"], c.get("image"), c.get("state") or "unknown",
                 c.get("restarts"))
            )  # fmt: skip
    with evcdb.transaction(db):
        inserted = db.conn.executemany(_INSERT_METRICS, rows).rowcount
        if containers:
            db.conn.executemany(_INSERT_CONTAINERS, containers)
    return inserted


def _decoded(sample: dict | None) -> dict | None:
    """A sample with its JSON-text columns (temps, net) parsed, for showing."""
    if sample is None:
        return None
    out = dict(sample)
    for key in ("temps", "net"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out


@dataclass
class CollectResult(Result):
    """One telemetry round: the playbook run, what was stored, liveness changes."""

    run: RunResult
    at: float
    samples: dict[str, dict]  # host -> the sample stored for it
    ingested: int
    events: list[dict]

    @property
    def ok(self) -> bool:
        return self.run.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "status": self.run.status,
            "ok": self.ok,
            "target": self.run.target,
            "duration_s": round(self.run.ended - self.run.started, 3),
            "ingested": self.ingested,
            "events": self.events,
            "run_id": self.run.ident,
            "artifacts_dir": self.run.artifacts_dir,
            "hosts": {
                host: {
                    "state": r.state,
                    "message": r.message,
                    "sample": _decoded(self.samples.get(host)),
                }
                for host, r in sorted(self.run.hosts.items())
            },  # fmt: skip
        }


class CollectOptions(Options):
    """One telemetry round: sample every targeted node, store it, update liveness."""

    target: Target = arg("all", help=TARGET_HELP)
    offline_after: int | None = opt(
        None,
        help="Missed rounds in a row that make a node offline (default: evc.yaml "
        "telemetry.offline_after, 3).",
        ge=1,
    )


def collect(ws: Workspace, options: CollectOptions, progress: Progress = SILENT) -> CollectResult:
    """One round on ``target``: sample every node in one playbook run, store, update liveness.

    A node that fails or vanishes mid-round is recorded as such (a miss when
    unreachable); the others are stored. ``offline_after`` (default: the
    workspace's ``telemetry.offline_after``) is K, the misses in a row that make
    a node offline.
    """
    target, offline_after = options.target, options.offline_after
    run = run_playbook(ws, PLAYBOOK, target, progress=progress, task_timeout=TASK_TIMEOUT_S)
    at = time.time()
    samples = {}
    for host, r in run.hosts.items():
        sample = (r.printed(TASK) or {}).get("sample")
        if r.state in ("ok", "changed") and isinstance(sample, dict):
            samples[host] = {**sample, "node": host, "at": at}
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        ingested = ingest(db, list(samples.values()))
        events = devices.record_liveness(db, run, offline_after or ws.offline_after, now=at)
    return CollectResult(run, at, samples, ingested, events)


# ------------------------------------------------------------------ reading


def _check_node(db, node: str | None) -> None:
    """A node filter must name a device (the error lists the known ones)."""
    if node is not None:
        devices.get(db, node)


def show(ws: Workspace, node: str | None = None, since_s: float = 3600.0, buckets: int = 24):
    """Per device: liveness, its latest sample within ``since_s``, that sample's
    containers, and CPU/memory means in ``buckets`` equal slices of the window
    (oldest first; None where no sample fell)."""
    db = evcdb.workspace_db(ws)
    _check_node(db, node)
    start = time.time() - since_s
    devices = list(
        db.query(
            "SELECT name, status, last_seen, missed FROM devices "
            "WHERE ? IS NULL OR name = ? ORDER BY name",
            [node, node],
        )
    )
    latest_sql = (
        "SELECT node, MAX(at) AS at FROM metrics WHERE at >= ? AND (? IS NULL OR node = ?) "
        "GROUP BY node"
    )
    args = [start, node, node]
    latest = {
        r["node"]: r
        for r in db.query(
            f"SELECT m.* FROM metrics m JOIN ({latest_sql}) l ON m.node = l.node AND m.at = l.at",
            args,
        )
    }
    containers: dict[str, list] = {}
    for r in db.query(
        f"SELECT c.node, c.name, c.image, c.state, c.restarts FROM container_status c "
        f"JOIN ({latest_sql}) l ON c.node = l.node AND c.at = l.at ORDER BY c.node, c.name",
        args,
    ):
        containers.setdefault(r.pop("node"), []).append(r)
    sparks = series(db, None if node is None else [node], start, since_s, buckets)
    views = []
    for d in devices:
        sample = _decoded(latest.get(d["name"]))
        empty = {"cpu_pct": [None] * buckets, "mem_pct": [None] * buckets}
        views.append(
            {**d, "sample": sample, "containers": containers.get(d["name"], []),
             "series": sparks.get(d["name"], empty), "since_s": since_s}
        )  # fmt: skip
    return views


SERIES_METRICS = ("cpu_pct", "mem_pct", "disk_pct", "temp_max_c", "load1", "net_rx_bps",
                  "net_tx_bps", "gpu_util_pct", "npu_util_pct")  # fmt: skip


def series(
    db,
    nodes: list[str] | None,
    start: float,
    since_s: float,
    buckets: int,
    metrics: tuple[str, ...] = ("cpu_pct", "mem_pct"),
) -> dict[str, dict[str, list]]:
    """Per node (all when ``nodes`` is None), each metric's mean in ``buckets`` equal
    slices of ``since_s`` seconds from ``start`` (oldest first; None where no sample fell)."""
    bad = [m for m in metrics if m not in SERIES_METRICS]
    if bad:
        raise UsageError(f"No metric {bad[0]!r}; choose from {', '.join(SERIES_METRICS)}.")
    means = ", ".join(f"AVG({m}) AS {m}" for m in metrics)
    among = "" if nodes is None else f"AND node IN ({', '.join('?' * len(nodes))})"
    out: dict[str, dict[str, list]] = {}
    for r in db.query(
        f"SELECT node, MIN(CAST((at - ?) * ? / ? AS INTEGER), ?) AS b, {means} FROM metrics "
        f"WHERE at >= ? {among} GROUP BY node, b",
        [start, buckets, since_s, buckets - 1, start, *(nodes or [])],
    ):
        s = out.setdefault(r["node"], {m: [None] * buckets for m in metrics})
        for m in metrics:
            s[m][r["b"]] = None if r[m] is None else round(r[m], 2)
    return out


def latest(db, nodes: list[str]) -> dict[str, dict]:
    """Each node's latest sample (temps and net decoded), for a page of nodes."""
    marks = ", ".join("?" * len(nodes))
    rows = db.query(
        f"SELECT m.* FROM metrics m JOIN (SELECT node, MAX(at) AS at FROM metrics "
        f"WHERE node IN ({marks}) GROUP BY node) l ON m.node = l.node AND m.at = l.at",
        nodes,
    )
    return {r["node"]: _decoded(r) for r in rows}


def export_csv(
    ws: Workspace, output: Path | None = None, since_s: float | None = None,
    node: str | None = None,
) -> int:  # fmt: skip
    """Metrics rows (oldest first) as CSV to ``output`` (written whole, then renamed
    into place) or stdout; returns the rows written. ``time`` is ISO 8601 UTC."""
    db = evcdb.workspace_db(ws)
    _check_node(db, node)
    since = None if since_s is None else time.time() - since_s
    rows = db.conn.execute(
        f"SELECT {', '.join(METRIC_COLUMNS)} FROM metrics "
        "WHERE (? IS NULL OR at >= ?) AND (? IS NULL OR node = ?) ORDER BY at, node",
        [since, since, node, node],
    )
    header = ("node", "at", "time", *METRIC_COLUMNS[2:])

    def write(f) -> int:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        n = 0
        for row in rows:
            iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(row[1])) + "Z"
            writer.writerow((row[0], row[1], iso, *row[2:]))
            n += 1
        return n

    if output is None:
        return write(sys.stdout)
    output = Path(output)
    if not output.parent.is_dir():
        raise UsageError(f"--output {output}: the folder {output.parent} does not exist.")
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            n = write(f)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def prune(ws: Workspace, older_than_s: float) -> dict[str, Any]:
    """Delete telemetry rows (metrics, container_status, node_events) and the progress
    lines of `evc serve`'s actions (action_events) older than
    ``older_than_s``, in short batches; returns the cutoff and rows deleted per table."""
    db = evcdb.workspace_db(ws)
    cutoff = time.time() - older_than_s
    deleted = {}
    for table in PRUNED_TABLES:
        total = 0
        while True:
            with evcdb.transaction(db):
                n = db.execute(
                    f"DELETE FROM {table} WHERE rowid IN "
                    f"(SELECT rowid FROM {table} WHERE at < ? LIMIT ?)",
                    [cutoff, PRUNE_BATCH],
                ).rowcount
            total += n
            if n < PRUNE_BATCH:
                break
        deleted[table] = total
    return {"cutoff": cutoff, "deleted": deleted}
