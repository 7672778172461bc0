"""Job records: the ``jobs``, ``shards``, ``results`` and ``detections`` rows of a job,
and the lock that lets one process at a time run it.

A job's items are fixed when it is created and each item gets one ``results`` row,
'pending' until the one shard that completes it turns it 'ok' or 'error'.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import socket
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evc import db as evcdb
from evc import views
from evc.config import Workspace
from evc.errors import EVCError, Result, UsageError
from evc.infer.data import open_item
from evc.progress import SILENT, Progress

MAX_KEYPOINTS = 1000  # per detection: more than any pose or face-mesh model gives


def keypoints_json(points) -> str | None:
    """A detection's keypoints as the JSON stored for it: the well-formed points of what a
    node reported (a name and finite x, y), at most MAX_KEYPOINTS; None when there are none.
    A node is not trusted, so nothing else of what it sent is kept."""
    if not isinstance(points, list):
        return None
    kept = [
        {"name": str(p.get("name"))[:64], "x": float(p["x"]), "y": float(p["y"])}
        for p in points[:MAX_KEYPOINTS]
        if isinstance(p, dict)
        and all(isinstance(p.get(k), int | float) and math.isfinite(p[k]) for k in ("x", "y"))
    ]
    return json.dumps(kept) if kept else None


@dataclass
class JobResult(Result):
    """A finished (or interrupted) job, as ``status`` shows it."""

    job: dict
    nodes: dict[str, dict]  # node -> items, ok, failed, busy_s, throughput
    skipped_nodes: dict[str, str]  # node -> why it took no part

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def status(self) -> str:
        """success (every item ok), partial (some errors) or error (none ok)."""
        if self.job["failed"] == 0 and self.job["state"] == "complete":
            return "success"
        return "partial" if self.job["ok"] else "error"

    def to_dict(self) -> dict:
        return {"status": self.status, "ok": self.ok, **self.job, "nodes": self.nodes,
                "skipped_nodes": self.skipped_nodes}  # fmt: skip


def job_dir(ws: Workspace, job_id: str) -> Path:
    return ws.ensure_private_dir() / "jobs" / job_id


@contextmanager
def job_lock(ws: Workspace, job_id: str, progress: Progress = SILENT) -> Iterator[None]:
    """Hold the job's lock while running it: a second ``run``/``resume`` of the job is
    refused (exit 2) naming the holder. The lock is an OS lock (``flock``) on
    ``.evc/jobs/JOB/lock``, which holds the holder's pid, host and start; the kernel
    releases it when the holder ends, however it ends, so a file left by a killed
    holder (its pid gone) is stale and the next run takes it over."""
    path = job_dir(ws, job_id) / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"Job {job_id} is already running: {_holder(fd) or 'another evc process'} holds "
                f"its lock ({path}). Wait for it to end, or stop that process first."
            ) from None
        except OSError as exc:
            raise EVCError(f"Cannot lock {path}: {exc.strerror}.") from None
        if stale := _holder(fd):
            progress.log(f"took over the lock of job {job_id} from {stale}, which is gone")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released: a later reader finds no holder named
    finally:
        os.close(fd)  # releases the flock


def holder(ws: Workspace, job_id: str) -> str | None:
    """Who runs the job now ('pid N on HOST since HH:MM:SS'), or None when nobody holds
    its lock (a job left 'running' then is resumable: its runner is gone)."""
    path = job_dir(ws, job_id) / "lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        named = _holder(fd)
        if named is None:  # released locks are emptied: no need to probe
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return named
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None  # a holder that died without releasing it
    finally:
        os.close(fd)


def _holder(fd: int) -> str | None:
    """Who the lock file names: 'pid N on HOST since HH:MM:SS', or None when it is empty."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"null")
        since = time.strftime("%H:%M:%S", time.localtime(holder["since"]))
        return f"pid {holder['pid']} on {holder['host']} since {since}"
    except (ValueError, TypeError, KeyError, OverflowError, OSError):
        return None


def get(ws: Workspace, job_id: str) -> dict:
    rows = list(evcdb.workspace_db(ws).query("SELECT * FROM jobs WHERE id = ?", [job_id]))
    if not rows:
        raise UsageError(f"No job {job_id!r}; `evc infer list` shows the jobs.")
    return rows[0]


def discard(ws: Workspace, job_id: str) -> None:
    """Forget a job that never ran: its rows and its staged items."""
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):  # its results rows go with it (ON DELETE CASCADE)
        db.execute("DELETE FROM jobs WHERE id = ?", [job_id])
    shutil.rmtree(job_dir(ws, job_id), ignore_errors=True)


def list_jobs(ws: Workspace, limit: int = 50) -> list[dict]:
    return list(
        evcdb.workspace_db(ws).query("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", [limit])
    )


def page(ws: Workspace, limit: int, offset: int, state: str | None = None) -> dict[str, Any]:
    """Jobs, newest first."""
    return views.page(
        evcdb.workspace_db(ws), "FROM jobs WHERE (? IS NULL OR state = ?)", [state, state],
        "created DESC", limit, offset,
    )  # fmt: skip


def results_page(
    ws: Workspace,
    job_id: str,
    limit: int,
    offset: int,
    *,
    state: str | None = None,
    label: str | None = None,
    min_score: float | None = None,
) -> dict[str, Any]:
    """A page of a job's items by name, each with its detections. With ``label`` or
    ``min_score``, only the items with a detection of that label at that score or
    above, and only those detections."""
    get(ws, job_id)
    db = evcdb.workspace_db(ws)
    filtered = label is not None or min_score is not None
    match = "job_id = ? AND (? IS NULL OR label = ?) AND score >= ?"
    match_args = [job_id, label, label, min_score or 0.0]
    where = "job_id = ? AND (? IS NULL OR state = ?)"
    args: list[Any] = [job_id, state, state]
    if filtered:
        where += f" AND item IN (SELECT item FROM detections WHERE {match})"
        args += match_args
    out = views.page(db, f"FROM results WHERE {where}", args, "item", limit, offset)
    items = [r["item"] for r in out["items"]]
    dets: dict[str, list] = {}
    if items:
        for d in db.query(
            "SELECT item, label, class_id, score, x, y, w, h FROM detections "
            f"WHERE {match} AND item IN ({', '.join('?' * len(items))}) ORDER BY id",
            [*match_args, *items],
        ):
            dets.setdefault(d.pop("item"), []).append(d)
    out["items"] = [{**r, "detections": dets.get(r["item"], [])} for r in out["items"]]
    return out


def open_input(ws: Workspace, job_id: str, item: str):
    """(open binary file, size) of one of the job's input items, read from the job's own
    data folder under the rules of :func:`evc.infer.data.open_item` (a link out of the
    folder is refused); a name that is not one of the job's items is a UsageError."""
    job = get(ws, job_id)
    db = evcdb.workspace_db(ws)
    if db.execute("SELECT 1 FROM results WHERE job_id = ? AND item = ?", [job_id, item]).fetchone():
        opened = open_item(Path(job["data_dir"]), item)
        if not isinstance(opened, str):
            return opened
        raise UsageError(f"Item {item!r} of job {job_id} cannot be read: {opened}.")
    raise UsageError(f"Job {job_id} has no item {item!r}.")


def labels(ws: Workspace, job_id: str) -> list[dict]:
    """The labels a job found: detections, items and best score of each."""
    get(ws, job_id)
    return list(
        evcdb.workspace_db(ws).query(
            "SELECT label, COUNT(*) AS detections, COUNT(DISTINCT item) AS items, "
            "MAX(score) AS max_score FROM detections WHERE job_id = ? GROUP BY label "
            "ORDER BY label",
            [job_id],
        )
    )


def results(ws: Workspace, job_id: str) -> list[dict]:
    """Every item's final (or pending) row, with its detections."""
    get(ws, job_id)
    db = evcdb.workspace_db(ws)
    dets: dict[str, list] = {}
    for d in db.query(
        "SELECT item, label, class_id, score, x, y, w, h, keypoints FROM detections "
        "WHERE job_id = ? ORDER BY id", [job_id],
    ):  # fmt: skip
        d["keypoints"] = json.loads(d["keypoints"]) if d["keypoints"] else None
        dets.setdefault(d.pop("item"), []).append(d)
    rows = db.query("SELECT * FROM results WHERE job_id = ? ORDER BY item", [job_id])
    return [{**r, "detections": dets.get(r["item"], [])} for r in rows]


def status(ws: Workspace, job_id: str) -> JobResult:
    job = get(ws, job_id)
    db = evcdb.workspace_db(ws)
    nodes = {
        r["node"]: {**r, "throughput": round(r["items"] / r["busy_s"], 3) if r["busy_s"] else None}
        for r in db.query(
            # busy_s: first shard taken to last one done (a node's shards overlap)
            "SELECT node, SUM(items) AS items, ROUND(MAX(finished) - MIN(started), 3) AS busy_s, "
            "COUNT(*) AS shards FROM shards WHERE job_id = ? AND state = 'done' GROUP BY node",
            [job_id],
        )
    }
    for r in db.query(
        "SELECT node, SUM(state = 'ok') AS ok, SUM(state = 'error') AS failed FROM results "
        "WHERE job_id = ? AND node IS NOT NULL GROUP BY node", [job_id],
    ):  # fmt: skip
        nodes.setdefault(r["node"], {"node": r["node"]}).update(ok=r["ok"], failed=r["failed"])
    return JobResult(job, nodes, json.loads(job["skipped_nodes"] or "{}"))


def throughputs(ws: Workspace, model: str, version: str, jobs: int = 5) -> dict[str, float]:
    """Items/s of model work per node for this model version (items over the time its
    items took on the node), measured on the last ``jobs`` jobs that ran it."""
    rows = evcdb.workspace_db(ws).query(
        "SELECT r.node, COUNT(*) / (SUM(r.latency_ms) / 1000.0) AS tput FROM results r "
        "WHERE r.job_id IN (SELECT id FROM jobs WHERE model = ? AND version = ? "
        "ORDER BY created DESC LIMIT ?) AND r.state = 'ok' AND r.latency_ms > 0 "
        "GROUP BY r.node",
        [model, version, jobs],
    )
    return {r["node"]: r["tput"] for r in rows}


def shard_costs(ws: Workspace, model: str, version: str, jobs: int = 5) -> dict[str, float]:
    """Seconds a push-mode shard costs each node beyond its items' model work (hand-over
    and answer): the median, over the shards of the last ``jobs`` push jobs of this
    model version that found the node idle, of their time less their items' latency. A
    shard sent while another ran on the node is left out: that one's work hid its
    hand-over."""
    rows = evcdb.workspace_db(ws).query(
        "WITH recent AS (SELECT id FROM jobs WHERE model = ? AND version = ? "
        "AND mode = 'push' ORDER BY created DESC LIMIT ?), "
        # one pass over the jobs' results (keyed by job), not one per shard
        "work AS (SELECT shard_id, SUM(latency_ms) / 1000.0 AS s FROM results "
        "WHERE job_id IN (SELECT id FROM recent) AND state = 'ok' GROUP BY shard_id) "
        "SELECT sh.job_id, sh.node, sh.started, sh.finished, COALESCE(work.s, 0) AS work "
        "FROM shards sh LEFT JOIN work ON work.shard_id = sh.id "
        "WHERE sh.job_id IN (SELECT id FROM recent) AND sh.state = 'done' "
        "ORDER BY sh.job_id, sh.node, sh.started",
        [model, version, jobs],
    )
    costs: dict[str, list[float]] = {}
    busy_until: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["job_id"], r["node"])
        if r["started"] >= busy_until.get(key, 0.0):
            costs.setdefault(r["node"], []).append(r["finished"] - r["started"] - r["work"])
        busy_until[key] = max(busy_until.get(key, 0.0), r["finished"])
    return {node: max(0.0, statistics.median(c)) for node, c in costs.items()}


def progress(db, job: dict, shards: dict[str, int] | None = None) -> dict[str, Any]:
    """A running job's progress from its rows (``job`` is its ``jobs`` row): items done
    (ok + error) and pending, per node, and its shards by state."""
    nodes: dict[str, dict[str, int]] = {}
    counts = {"ok": 0, "error": 0, "pending": 0}
    for node, state, n in db.execute(
        "SELECT node, state, COUNT(*) FROM results WHERE job_id = ? GROUP BY node, state",
        [job["id"]],
    ):
        counts[state] += n
        if node is not None:
            nodes.setdefault(node, {"ok": 0, "error": 0})[state] = n
    if shards is None:
        shards = dict(
            db.execute(
                "SELECT state, COUNT(*) FROM shards WHERE job_id = ? GROUP BY state", [job["id"]]
            ).fetchall()
        )
    done = counts["ok"] + counts["error"]
    return {
        **job,
        "done": done,
        "ok_items": counts["ok"],
        "error_items": counts["error"],
        "pending": counts["pending"],
        "percent": round(100 * done / job["items"], 1) if job["items"] else 100.0,
        "nodes": nodes,
        "shards": shards,
    }
