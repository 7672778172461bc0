"""What changed in the database since the last look, as events for the live stream.

Everything EVC does is recorded as it happens, by whichever process does it (an `evc`
command, a monitor, this or another server), so the stream reads the database rather
than listening to this process: a node's status change is a ``node_events`` row, an
action's progress an ``action_events`` row, a deployment a ``deployments`` row (each
read past the last id seen). Jobs and run-config steps are rows that change in place;
the ones running or ended within ``WINDOW_S`` are compared with what was last sent, so
a job's progress (items done, per node) goes out as its shards end. Each poll costs a
few indexed queries, whatever the number of listeners: one :class:`Feed` serves them
all (:mod:`evc.api.events`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from evc import db as evcdb
from evc.config import Workspace
from evc.infer.jobs import progress

WINDOW_S = 10.0  # jobs and runs that ended this recently are still compared
BATCH = 500  # rows of one table per poll; the rest come on the next


def event(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "data": data}


class Feed:
    """Polls one workspace's database; each :meth:`poll` returns the events since the
    previous one (none for what was there when the feed started)."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        db = evcdb.workspace_db(ws)
        self.cursors = {
            table: db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0]
            for table in ("node_events", "deployments", "action_events")
        }
        self.jobs: dict[str, tuple] = {}
        self.runs: dict[str, tuple] = {}
        self.steps: dict[tuple[str, int], tuple] = {}
        self.telemetry_at = self._telemetry_at(db)
        self.devices = self._devices(db)
        self._events: list[dict] = []
        self.poll()  # what is running now is the baseline, not news
        self._events = []

    def poll(self) -> list[dict[str, Any]]:
        db = evcdb.workspace_db(self.ws)
        self._events = []
        since = time.time() - WINDOW_S
        self._nodes(db)
        self._deployments(db)
        self._actions(db)
        self._jobs(db, since)
        self._runs(db, since)
        at = self._telemetry_at(db)
        if at != self.telemetry_at:
            self.telemetry_at = at
            self._events.append(event("telemetry", {"at": at}))
        devices = self._devices(db)
        if devices != self.devices:
            self.devices = devices
            self._events.append(event("devices", {"count": devices[0]}))
        return self._events

    def _after(self, db, table: str, sql: str) -> list[dict]:
        rows = list(db.query(sql, [self.cursors[table], BATCH]))
        if rows:
            self.cursors[table] = rows[-1]["id"]
        return rows

    def _nodes(self, db) -> None:
        for row in self._after(
            db, "node_events",
            "SELECT e.*, d.last_seen FROM node_events e LEFT JOIN devices d ON d.name = e.node "
            "WHERE e.id > ? ORDER BY e.id LIMIT ?",
        ):  # fmt: skip
            self._events.append(event("node", row))

    def _deployments(self, db) -> None:
        for row in self._after(
            db, "deployments",
            "SELECT id, model, version, node, action, state, started, finished, error "
            "FROM deployments WHERE id > ? ORDER BY id LIMIT ?",
        ):  # fmt: skip
            self._events.append(event("deployment", row))

    def _actions(self, db) -> None:
        for row in self._after(
            db, "action_events",
            "SELECT e.id, e.action_id, e.at, e.kind, e.message, a.kind AS action_kind, a.ref, "
            "a.who FROM action_events e JOIN actions a ON a.id = e.action_id "
            "WHERE e.id > ? ORDER BY e.id LIMIT ?",
        ):  # fmt: skip
            self._events.append(event("action" if row["kind"] == "state" else "log", row))

    def _jobs(self, db, since: float) -> None:
        seen = {}
        for job in db.query(
            "SELECT id, model, version, state, items, ok, failed, created, started, finished "
            "FROM jobs WHERE state = 'running' OR created >= ? OR finished >= ?",
            [since, since],
        ):
            shards = tuple(db.execute(
                "SELECT state, COUNT(*) FROM shards WHERE job_id = ? GROUP BY state ORDER BY state",
                [job["id"]],
            ).fetchall())  # fmt: skip
            key = (tuple(job.values()), shards)
            seen[job["id"]] = key
            if self.jobs.get(job["id"]) != key:
                self._events.append(event("job", progress(db, job, dict(shards))))
        self.jobs = seen

    def _runs(self, db, since: float) -> None:
        seen_runs, seen_steps = {}, {}
        for run in db.query(
            "SELECT id, file, state, steps_total, steps_ok, steps_failed, started, ended, "
            "resume_from FROM scenario_runs WHERE state = 'running' OR started >= ? "
            "OR ended >= ?",
            [since, since],
        ):
            for step in db.query(
                "SELECT run_id, idx, name, kind, target, state, started, ended, summary, hosts "
                "FROM scenario_steps WHERE run_id = ? ORDER BY idx",
                [run["id"]],
            ):
                skey = (step["state"], step["ended"], step["summary"])
                seen_steps[(run["id"], step["idx"])] = skey
                if self.steps.get((run["id"], step["idx"])) != skey:
                    step["hosts"] = json.loads(step["hosts"]) if step["hosts"] else None
                    self._events.append(event("step", step))
            key = tuple(run.values())  # after its steps: a run's end comes last
            seen_runs[run["id"]] = key
            if self.runs.get(run["id"]) != key:
                self._events.append(event("run", run))
        self.runs, self.steps = seen_runs, seen_steps

    @staticmethod
    def _telemetry_at(db) -> float | None:
        return db.execute("SELECT MAX(at) FROM metrics").fetchone()[0]

    @staticmethod
    def _devices(db) -> tuple:
        return tuple(db.execute("SELECT COUNT(*), MAX(added_at) FROM devices").fetchone())
