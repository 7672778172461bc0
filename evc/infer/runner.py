"""Running a job: plan -> dispatch -> collect -> ingest -> retry.

Two threads per node take shards from an ``evc.schedule.WorkQueue`` and run each
through ``playbooks/infer_shard.yml`` (one archive per shard, handed to the model
container's ``evc-infer --serve``; the second thread's shard waits on the node
while the first runs, so the node never idles during a hand-over); a failed shard
goes back to the queue for another node, an unreachable node is dropped and its
work re-queued. Ctrl-C leaves pending items pending: ``resume`` runs them.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from evc import db as evcdb
from evc import schedule
from evc.ansible import resolve_hosts, run_playbook
from evc.config import Workspace
from evc.errors import Interrupted, UsageError
from evc.infer.data import stage_items
from evc.infer.jobs import JobResult, get, job_dir, keypoints_json, status, throughputs
from evc.model import catalogue
from evc.model.deployments import JOBS_DIR, current, deployed_on
from evc.names import ModelOrRef, Target
from evc.options import TARGET_HELP, Options, arg, opt
from evc.progress import SILENT, Progress

BROKEN_AFTER = 2  # a node whose shards fail this many times in a row is dropped
SHARD_TIMEOUT_S = 300  # base per-shard task timeout; plus 2 s per item
RUNNERS_PER_NODE = 2  # the next shard waits on the node while one runs: no idle hand-over


def _model_for(ws: Workspace, ref: str, hosts: list[str]) -> catalogue.Model:
    """NAME:VERSION as given, or NAME's one version deployed on the targeted nodes."""
    if ":" in ref:
        return catalogue.get(ws, ref)
    versions = {r["version"] for r in current(ws, ref) if r["node"] in hosts}
    if len(versions) != 1:
        found = ", ".join(sorted(versions)) or "none"
        raise UsageError(
            f"Which version of {ref}? Deployed on the target: {found}. Give NAME:VERSION."
        )
    return catalogue.get(ws, f"{ref}:{versions.pop()}")


def _strategy(value: str) -> str:
    if value not in schedule.STRATEGIES:
        raise ValueError(
            f"{value!r} is not a strategy: choose one of {', '.join(schedule.STRATEGIES)}"
        )
    return value


class RunOptions(Options):
    """Run MODEL over a data set spread across the nodes; every item ends ok or with an error."""

    model: ModelOrRef = arg(help="NAME:VERSION, or NAME for the version deployed.")
    target: Target = arg("all", help=TARGET_HELP)
    data: Path = opt(..., help="A folder of images, a .zip of images, or a video.")
    strategy: Annotated[str, AfterValidator(_strategy)] = opt(
        "dynamic", help="round-robin | load | proportional | dynamic (work stealing)."
    )
    retries: int = opt(2, help="Re-runs of a failed shard, each on another node.", ge=0, le=20)
    conf: float | None = opt(None, help="Minimum score (default: the model's).", ge=0, le=1)
    iou: float | None = opt(None, help="NMS IoU threshold (default: the model's).", ge=0, le=1)
    imgsz: int | None = opt(None, help="Inference size (default: the model's).", ge=32, le=4096)
    fps: float = opt(1.0, help="Frames per second taken from a video.", ge=0.01, le=240)
    shard_size: int | None = opt(
        None, help="Items per shard for dynamic (default: auto).", ge=1, le=100_000
    )


def run(ws: Workspace, options: RunOptions, progress: Progress = SILENT) -> JobResult:
    """Create a job over ``data`` on the nodes of ``target`` that run the model, and run it."""
    o = options
    data, target = o.data, o.target
    hosts = resolve_hosts(ws.inventory, target)
    model = _model_for(ws, o.model, hosts)
    _nodes(ws, model.name, model.version, hosts)  # refuse before creating anything
    job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    folder = job_dir(ws, job_id)
    try:
        root, items = stage_items(data, folder, o.fps)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    params = {"conf": o.conf, "iou": o.iou, "imgsz": o.imgsz, "shard_size": o.shard_size,
              "fps": o.fps}  # fmt: skip
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        db["jobs"].insert(
            {
                "id": job_id,
                "model": model.name,
                "version": model.version,
                "image": model.image,
                "target": target,
                "strategy": o.strategy,
                "retries": o.retries,
                "params": json.dumps(params),
                "source": str(data),
                "data_dir": str(root),
                "state": "running",
                "created": time.time(),
                "items": len(items),
                "ok": 0,
                "failed": 0,
            }  # fmt: skip
        )
        db["results"].insert_all(
            ({"job_id": job_id, "item": item, "state": "pending"} for item in items),
            batch_size=1000,
        )
    return _execute(ws, job_id, hosts, progress)


def resume(
    ws: Workspace, job_id: str, *, target: str | None = None, progress: Progress = SILENT
) -> JobResult:
    """Run a job's pending items again (after Ctrl-C, or to retry on other nodes)."""
    job = get(ws, job_id)
    if job["state"] == "complete":
        raise UsageError(f"Job {job_id} is complete; nothing to resume.")
    return _execute(ws, job_id, resolve_hosts(ws.inventory, target or job["target"]), progress)


def _nodes(ws, model: str, version: str, hosts: list[str]) -> tuple[list[str], dict[str, str]]:
    """(nodes that run MODEL:VERSION, {other node: why it is skipped}); none is an error."""
    running = set(deployed_on(ws, model, version))
    nodes = [h for h in hosts if h in running]
    if not nodes:
        raise UsageError(
            f"{model}:{version} runs on none of the target's nodes ({', '.join(hosts)}): "
            f"run `evc model deploy {model}:{version} TARGET` first."
        )
    return nodes, {h: f"{model}:{version} is not deployed here" for h in hosts if h not in running}


def _execute(ws: Workspace, job_id: str, hosts: list[str], progress: Progress) -> JobResult:
    job = get(ws, job_id)
    db = evcdb.workspace_db(ws)
    nodes, skipped = _nodes(ws, job["model"], job["version"], hosts)
    db["jobs"].update(job_id, {"skipped_nodes": json.dumps(skipped), "state": "running"})
    pending = [r["item"] for r in db.query(
        "SELECT item FROM results WHERE job_id = ? AND state = 'pending' ORDER BY item", [job_id]
    )]  # fmt: skip
    params = json.loads(job["params"])
    tputs = throughputs(ws, job["model"], job["version"])
    stats = [schedule.NodeStats(n, throughput=tputs.get(n)) for n in nodes]
    shards = schedule.plan(pending, stats, job["strategy"], params.get("shard_size"))
    paced = job["strategy"] == "dynamic" and not params.get("shard_size")
    pacer = schedule.Pacer(tputs) if paced else None
    queue = schedule.WorkQueue(shards, nodes, job["retries"], pacer)
    runner = _Runner(ws, job, queue)
    if not job["started"]:
        db["jobs"].update(job_id, {"started": time.time()})
    threads = [
        threading.Thread(target=runner.work, args=(n,), daemon=True)
        for n in nodes for _ in range(RUNNERS_PER_NODE)
    ]  # fmt: skip
    try:  # from the first thread's start: a Ctrl-C while the others start is caught too
        with progress.task(f"job {job_id}") as line:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                line.status(runner.progress(len(pending)))
                for t in threads:
                    t.join(timeout=0.5)
    except KeyboardInterrupt:
        runner.stop.set()
        with evcdb.transaction(db):  # job and its running shards change together
            db["jobs"].update(job_id, {"state": "interrupted"})
            db.execute(
                "UPDATE shards SET state = 'interrupted', finished = ? "
                "WHERE job_id = ? AND state = 'running'", [time.time(), job_id],
            )  # fmt: skip
        raise Interrupted(
            f"Job {job_id} interrupted; its pending items stay pending: "
            f"`evc infer resume {job_id}` runs them."
        ) from None
    _fail_leftovers(db, job_id, queue)
    _finish(db, job_id)
    shutil.rmtree(job_dir(ws, job_id) / "shards", ignore_errors=True)
    return status(ws, job_id)


def _fail_leftovers(db, job_id: str, queue: schedule.WorkQueue) -> None:
    """Items of shards that failed for good, or that no node could take, get error rows."""
    reasons = [(s, f"failed after {s.attempt} attempt(s): {s.error}") for s in queue.failures()]
    reasons += [(s, f"no node left to run it (last error: {s.error})") for s in queue.stranded()]
    with evcdb.transaction(db):
        for shard, reason in reasons:
            db.conn.executemany(
                "UPDATE results SET state = 'error', error = ? "
                "WHERE job_id = ? AND item = ? AND state = 'pending'",
                [(reason, job_id, item) for item in shard.items],
            )


def _finish(db, job_id: str) -> None:
    counts = next(iter(db.query(
        "SELECT SUM(state = 'ok') AS ok, SUM(state = 'error') AS failed, "
        "SUM(state = 'pending') AS pending FROM results WHERE job_id = ?", [job_id],
    )))  # fmt: skip
    job = next(iter(db.query("SELECT started FROM jobs WHERE id = ?", [job_id])))
    now = time.time()
    db["jobs"].update(
        job_id,
        {
            "ok": counts["ok"] or 0,
            "failed": counts["failed"] or 0,
            "state": "interrupted" if counts["pending"] else "complete",
            "finished": now,
            "makespan_s": round(now - job["started"], 3),
        },
    )


class _Runner:
    """What one node's thread does: take a shard, ship it, run it, ingest it."""

    def __init__(self, ws: Workspace, job: dict, queue: schedule.WorkQueue):
        self.ws, self.job, self.queue = ws, job, queue
        self.stop = threading.Event()
        self.done_items = 0
        self._lock = threading.Lock()
        params = json.loads(job["params"])
        self.params = {k: params.get(k) for k in ("conf", "iou", "imgsz")}
        self.dir = job_dir(ws, job["id"]) / "shards"

    def progress(self, total: int) -> str:
        s = self.queue.summary()
        return f"{self.done_items}/{total} items, {s['shards_running']} shards running"

    def work(self, node: str) -> None:
        failures = 0
        while not self.stop.is_set() and (shard := self.queue.take(node)) is not None:
            outcome, error = self._run_shard(node, shard)
            if self.stop.is_set():
                return
            if outcome == "done":
                failures = 0
            elif outcome == "lost":
                self.queue.node_lost(node)
                return
            else:
                self.queue.failed(shard, node, error)
                failures += 1
                if failures >= BROKEN_AFTER:  # e.g. its model container is gone
                    self.queue.node_lost(node)
                    return

    def _run_shard(self, node: str, shard: schedule.Shard) -> tuple[str, str | None]:
        db = evcdb.workspace_db(self.ws)
        name = f"{self.job['id']}-{shard.index}-{shard.attempt}"
        started = time.time()
        shard_id = (
            db["shards"]
            .insert(
                {
                    "job_id": self.job["id"],
                    "idx": shard.index,
                    "node": node,
                    "attempt": shard.attempt,
                    "items": len(shard.items),
                    "state": "running",
                    "started": started,
                },  # fmt: skip
            )
            .last_pk
        )
        archive = self.dir / f"{name}.tar"
        try:
            self._archive(shard, archive)
            run = run_playbook(
                self.ws, "infer_shard.yml", node,
                task_timeout=SHARD_TIMEOUT_S + 2 * len(shard.items) + 30,
                extravars={
                    "evc_model": self.job["model"], "evc_shard": name,
                    "evc_archive": str(archive), "evc_jobs_dir": JOBS_DIR,
                    "evc_timeout": SHARD_TIMEOUT_S + 2 * len(shard.items),
                },
            )  # fmt: skip
            host = run.hosts[node]
            if host.state == "unreachable":
                outcome, error = "lost", host.message or "unreachable"
            elif host.state == "failed":
                outcome, error = "failed", f"{host.failed_task}: {host.message}"
            else:
                text = host.outputs.get("results", {}).get("jsonl", "")
                outcome, error = self._ingest(db, shard, shard_id, node, text)
        except OSError as exc:
            outcome, error = "failed", f"cannot stage the shard: {exc}"
        finally:
            archive.unlink(missing_ok=True)
        if outcome != "done":
            state = "interrupted" if self.stop.is_set() else outcome
            db["shards"].update(shard_id, {"state": state, "finished": time.time(), "error": error})
        return outcome, error

    def _archive(self, shard: schedule.Shard, path: Path) -> None:
        """The shard as the model server reads it: ``shard.json`` (parameters) + items."""
        root = Path(self.job["data_dir"])
        params = json.dumps(self.params).encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo("shard.json")
            info.size = len(params)
            tar.addfile(info, io.BytesIO(params))
            for item in shard.items:
                tar.add(root / item, arcname=item)

    def _ingest(self, db, shard, shard_id: int, node: str, text: str):
        try:
            records = {r["item"]: r for r in map(json.loads, filter(None, text.splitlines()))}
        except (ValueError, KeyError, TypeError) as exc:
            return "failed", f"unreadable results: {exc}"
        missing = set(shard.items) - set(records)
        if missing:
            return "failed", f"the results lack {len(missing)} of {len(shard.items)} items"
        busy_s = sum(records[i].get("latency_ms") or 0 for i in shard.items) / 1000
        if not self.queue.done(shard, busy_s):  # a stale report (node given up): drop it
            return "lost", "report came after the node was given up"
        with evcdb.transaction(db):
            for item in shard.items:
                self._ingest_item(db, records[item], shard_id, node, shard.attempt)
            db["shards"].update(shard_id, {"state": "done", "finished": time.time()})
        with self._lock:
            self.done_items += len(shard.items)
        return "done", None

    def _ingest_item(self, db, rec: dict, shard_id: int, node: str, attempt: int) -> None:
        cursor = db.execute(
            "UPDATE results SET state = ?, error = ?, latency_ms = ?, width = ?, height = ?, "
            "node = ?, shard_id = ?, attempt = ? WHERE job_id = ? AND item = ? "
            "AND state = 'pending'",
            ["ok" if rec["ok"] else "error", rec.get("error"), rec.get("latency_ms"),
             rec.get("width"), rec.get("height"), node, shard_id, attempt, self.job["id"],
             rec["item"]],
        )  # fmt: skip
        if cursor.rowcount != 1:
            return  # already final: exactly once
        db["detections"].insert_all(
            {"job_id": self.job["id"], "item": rec["item"], "label": d["label"],
             "class_id": d.get("class_id"), "score": d["score"], "x": d["box"][0],
             "y": d["box"][1], "w": d["box"][2], "h": d["box"][3],
             "keypoints": keypoints_json(d.get("keypoints"))}
            for d in rec.get("detections") or []
        )  # fmt: skip
