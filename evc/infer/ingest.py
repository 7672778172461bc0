"""A job's rows as it runs, the same for push mode (:mod:`evc.infer.runner`) and pull
mode (:mod:`evc.infer.pull`): its start, each item's result stored exactly once, an
interruption that leaves pending items pending, and its end, where every item still
pending gets its reason."""

from __future__ import annotations

import json
import time

from evc import db as evcdb
from evc.infer.jobs import keypoints_json
from evc.infer.shards import Record


def begin(db, job_id: str, skipped: dict[str, str]) -> list[str]:
    """Mark the job running (a shard still 'running' is stale: the caller holds the job's
    lock) and return its pending items, by name."""
    with evcdb.transaction(db):
        db["jobs"].update(job_id, {"skipped_nodes": json.dumps(skipped), "state": "running"})
        db.execute(
            "UPDATE shards SET state = 'interrupted', finished = COALESCE(finished, ?) "
            "WHERE job_id = ? AND state = 'running'", [time.time(), job_id],
        )  # fmt: skip
    if not db["jobs"].get(job_id)["started"]:
        db["jobs"].update(job_id, {"started": time.time()})
    return [r["item"] for r in db.query(
        "SELECT item FROM results WHERE job_id = ? AND state = 'pending' ORDER BY item", [job_id]
    )]  # fmt: skip


def store_item(
    db, job_id: str, rec: Record, shard_id: int | None, node: str | None, attempt: int | None
) -> bool:
    """Turn the item's pending row final with ``rec`` (and add its detections); False,
    changing nothing, when it is final already: a late or repeated report is a no-op."""
    cursor = db.execute(
        "UPDATE results SET state = ?, error = ?, latency_ms = ?, width = ?, height = ?, "
        "node = ?, shard_id = ?, attempt = ? WHERE job_id = ? AND item = ? "
        "AND state = 'pending'",
        ["ok" if rec.ok else "error", None if rec.ok else rec.error or "failed on the node",
         rec.latency_ms, rec.width, rec.height, node, shard_id, attempt, job_id, rec.item],
    )  # fmt: skip
    if cursor.rowcount != 1:
        return False
    if rec.detections:  # plain SQL: sqlite-utils' insert_all inspects the table every call
        db.conn.executemany(
            "INSERT INTO detections (job_id, item, label, class_id, score, x, y, w, h, "
            "keypoints) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(job_id, rec.item, d.label, d.class_id, d.score, *d.box,
              keypoints_json(d.keypoints)) for d in rec.detections],
        )  # fmt: skip
    return True


def interrupt(db, job_id: str) -> None:
    """The run stopped: the job and its running shards change together; pending items
    stay pending (``evc infer resume`` runs them)."""
    with evcdb.transaction(db):
        db["jobs"].update(job_id, {"state": "interrupted"})
        db.execute(
            "UPDATE shards SET state = 'interrupted', finished = ? "
            "WHERE job_id = ? AND state = 'running'", [time.time(), job_id],
        )  # fmt: skip


def finish(
    db, job_id: str, reasons: list[tuple[list[str], str]],
    unstored: list[tuple[int, dict]] | None = None,
) -> None:  # fmt: skip
    """Record the job's end: the shard rows the database refused while it ran; each
    (items, reason) of ``reasons`` on those items still pending; 'no shard reported it'
    on any other item still pending (a bug's doing), so every item ends ok or with a
    reason; the counts and makespan."""
    now = time.time()
    with evcdb.transaction(db):
        for shard_id, row in unstored or []:
            db["shards"].update(shard_id, row)
        for items, reason in reasons:
            db.conn.executemany(
                "UPDATE results SET state = 'error', error = ? "
                "WHERE job_id = ? AND item = ? AND state = 'pending'",
                [(reason, job_id, item) for item in items],
            )
        db.execute(
            "UPDATE results SET state = 'error', error = 'no shard reported it' "
            "WHERE job_id = ? AND state = 'pending'", [job_id],
        )  # fmt: skip
        counts = next(iter(db.query(
            "SELECT SUM(state = 'ok') AS ok, SUM(state = 'error') AS failed "
            "FROM results WHERE job_id = ?", [job_id],
        )))  # fmt: skip
        job = next(iter(db.query("SELECT started FROM jobs WHERE id = ?", [job_id])))
        db["jobs"].update(job_id, {
            "ok": counts["ok"] or 0, "failed": counts["failed"] or 0, "state": "complete",
            "finished": now, "makespan_s": round(now - job["started"], 3),
        })  # fmt: skip
