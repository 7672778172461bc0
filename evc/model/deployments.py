"""Deployment records: one ``deployments`` row per targeted node per action.

A node's current deployment of a model is its latest row that is 'running' or
'removed' (failed and skipped attempts change nothing on the node).
"""

from __future__ import annotations

import time

from evc import db as evcdb
from evc import views
from evc.config import Workspace

CONTAINER_PREFIX = "evc-model-"  # a model's container on a node: evc-model-NAME
PULLER_PREFIX = "evc-pull-"  # its pull-mode worker, where the node holds a queue credential
JOBS_DIR = "/var/lib/evc/jobs"  # on the node; models/NAME is mounted at /jobs in its container
_LIVE = ("running", "removed")  # rows that say what a node runs (or that it runs nothing)


def current(ws: Workspace, model: str | None = None) -> list[dict]:
    """What runs where: the latest live row per (model, node), without removed ones."""
    return _running(evcdb.workspace_db(ws), model=model)


def _running(db, *, model: str | None = None, node: str | None = None) -> list[dict]:
    rows = db.query(
        f"""
        SELECT d.* FROM deployments d
        JOIN (SELECT model, node, MAX(id) AS id FROM deployments
              WHERE state IN ({", ".join("?" * len(_LIVE))}) GROUP BY model, node) last
          ON d.id = last.id
        WHERE d.state = 'running' AND (? IS NULL OR d.model = ?) AND (? IS NULL OR d.node = ?)
        ORDER BY d.model, d.node
        """,
        [*_LIVE, model, model, node, node],
    )
    return list(rows)


def end_on(db, node: str, reason: str) -> list[str]:
    """Record that NODE runs nothing any more (its device is removed: the node is gone or
    no longer EVC's), so no model is listed as running on it; returns the models it ran.

    A 'removed' row per model, with no playbook run (``run_id`` NULL) and the reason in
    ``error``; run it in the transaction that deletes the device."""
    now = time.time()
    rows = _running(db, node=node)
    for row in rows:
        db["deployments"].insert({
            **spec(row), "model": row["model"], "node": node, "action": "undeploy",
            "state": "removed", "run_id": None, "started": now, "finished": now, "error": reason,
        })  # fmt: skip
    return [row["model"] for row in rows]


def spec(row: dict) -> dict:
    """What a node is sent: version, image (``ADDRESS/evc/NAME@sha256:...``) and container
    limits."""
    return {k: row.get(k) for k in ("version", "image", "cpus", "memory")}


def record(ws: Workspace, action: str, model: str, run, sent: dict) -> None:
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        for host, r in run.hosts.items():
            if r.state in ("ok", "changed"):
                state = "removed" if action == "undeploy" else "running"
            else:
                state = "skipped" if r.state == "skipped" else "failed"
            db["deployments"].insert(
                {
                    "model": model,
                    "node": host,
                    **sent[host],
                    "action": action,
                    "state": state,
                    "run_id": run.ident,
                    "started": run.started,
                    "finished": run.ended,
                    "error": r.message if state == "failed" else None,
                }
            )


def previous(ws: Workspace, name: str, host: str, now: dict | None) -> dict | None:
    if now is None:
        return None
    rows = evcdb.workspace_db(ws).query(
        "SELECT * FROM deployments WHERE model = ? AND node = ? AND state = 'running' "
        "AND id < ? AND version != ? ORDER BY id DESC LIMIT 1",
        [name, host, now["id"], now["version"]],
    )
    return next(iter(rows), None)


def deployed_on(ws: Workspace, name: str, version: str) -> list[str]:
    """Nodes that currently run NAME:VERSION."""
    return [r["node"] for r in current(ws, name) if r["version"] == version]


def history(
    ws: Workspace, limit: int, offset: int, model: str | None = None, node: str | None = None
) -> dict:
    """Every deployment row (each action on each node), newest first."""
    return views.page(
        evcdb.workspace_db(ws),
        "FROM deployments WHERE (? IS NULL OR model = ?) AND (? IS NULL OR node = ?)",
        [model, model, node, node], "id DESC", limit, offset,
    )  # fmt: skip
