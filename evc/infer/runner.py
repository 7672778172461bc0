"""Running a job: plan -> dispatch -> collect -> ingest -> retry.

Two threads per node take shards from an ``evc.schedule.WorkQueue`` and run each
through ``playbooks/infer_shard.yml`` (one archive per shard, handed to the model
container's ``evc-infer --serve``; the second thread's shard waits on the node
while the first runs, so the node never idles during a hand-over); a failed shard
goes back to the queue for another node, an unreachable node is dropped and its
work re-queued. Whatever goes wrong in a runner thread (a malformed answer, a locked
database, a bug) fails that shard with its reason, so the job always ends. Ctrl-C
leaves pending items pending: ``resume`` runs them, after removing what the
interrupted run left on the nodes (:mod:`evc.infer.shards` names every dispatch
apart, so a leftover could not answer a later shard anyway; it would only waste the
node's time).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from evc import db as evcdb
from evc import fleet, schedule
from evc.ansible import run_playbook
from evc.config import Workspace
from evc.errors import EVCError, Interrupted, UsageError
from evc.infer import ingest, pull
from evc.infer.data import stage_items
from evc.infer.jobs import (
    JobResult,
    discard,
    get,
    job_dir,
    job_lock,
    shard_costs,
    status,
    throughputs,
)
from evc.infer.nodes import declared_nodes, usable_nodes
from evc.infer.shards import Record, build_archive, dispatch_name, parse_answer
from evc.model import catalogue
from evc.model.deployments import JOBS_DIR, current
from evc.names import ModelOrRef, Target
from evc.options import TARGET_HELP, Options, arg, opt
from evc.progress import SILENT, Progress
from evc.targets import resolve_hosts

# What evc_shard says when the node no longer runs the model (stopped, or re-imaged:
# its job folder is gone): the node is given up at once, with the command that repairs it.
_CONTAINER_GONE = re.compile(r"model container \S+ is not (running|deployed)")
_SHARD_STATE = {"unstored": "failed", "stale": "lost"}  # outcome -> the shard row's state
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


def _one_of(choices: tuple[str, ...], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not a {what}: choose one of {', '.join(choices)}")
        return value

    return AfterValidator(check)


class RunOptions(Options):
    """Run MODEL over a data set spread across the nodes; every item ends ok or with an error."""

    model: ModelOrRef = arg(help="NAME:VERSION, or NAME for the version deployed.")
    target: Target = arg("all", help=TARGET_HELP)
    data: Path = opt(
        ..., help="A folder of images, a .zip, .tar, .tar.gz or .tgz of images, or a video."
    )
    strategy: Annotated[str, _one_of(schedule.STRATEGIES, "strategy")] = opt(
        "dynamic", help="round-robin | load | proportional | dynamic (work stealing)."
    )
    mode: Annotated[str, _one_of(("push", "pull"), "mode")] = opt(
        "push", help="push: shards sent over SSH; pull: nodes take them from the queue."
    )
    retries: int = opt(2, help="Re-runs of a failed shard, each on another node.", ge=0, le=20)
    conf: float | None = opt(None, help="Minimum score (default: the model's).", ge=0, le=1)
    iou: float | None = opt(None, help="NMS IoU threshold (default: the model's).", ge=0, le=1)
    imgsz: int | None = opt(None, help="Inference size (default: the model's).", ge=32, le=4096)
    fps: float = opt(1.0, help="Frames per second taken from a video.", ge=0.01, le=240)
    shard_size: int | None = opt(
        None, help="Items per shard for dynamic (default: auto).", ge=1, le=100_000
    )


class ResumeOptions(Options):
    """Run the pending items of an interrupted job (on other nodes with ``target``)."""

    target: Target | None = arg(None, help="Nodes to use (default: the job's target).")


def run(
    ws: Workspace,
    options: RunOptions,
    progress: Progress = SILENT,
    *,
    stop: threading.Event | None = None,
) -> JobResult:
    """Create a job over ``data`` on the nodes of ``target`` that run the model, and run it.
    ``stop`` set ends it the way Ctrl-C does (see :func:`resume`)."""
    job_id, hosts, model = _prepare(ws, options)
    with job_lock(ws, job_id, progress):
        _create(ws, options, job_id, model, progress)
        try:  # after the data is checked: bad input is refused without asking the nodes
            checked = _usable(ws, model.name, model.version, options.mode, hosts, progress)
        except BaseException:  # no node usable, or Ctrl-C: no job is left half-made
            discard(ws, job_id)
            raise
        return _execute(ws, job_id, hosts, progress, stop, checked)


def create(ws: Workspace, options: RunOptions, progress: Progress = SILENT) -> str:
    """Create a job (its items staged, each one pending) without running it, and return
    its id: :func:`resume` runs it (the HTTP API answers with the id first)."""
    job_id, _, model = _prepare(ws, options)
    with job_lock(ws, job_id, progress):
        _create(ws, options, job_id, model, progress)
    return job_id


def _prepare(ws: Workspace, o: RunOptions) -> tuple[str, list[str], catalogue.Model]:
    """A new job id, the target's hosts and the model; refuses before anything is created
    (asking only the database: whether the nodes serve it is checked when the job runs)."""
    hosts = resolve_hosts(ws.inventory, o.target)
    model = _model_for(ws, o.model, hosts)
    declared_nodes(ws, model.name, model.version, hosts)
    if o.mode == "pull":
        pull.check_queue(ws)
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4], hosts, model


def _create(ws, o: RunOptions, job_id: str, model: catalogue.Model, progress: Progress) -> None:
    data, target = o.data, o.target
    folder = job_dir(ws, job_id)
    try:
        root, items = stage_items(data, folder, o.fps, progress)
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
                "mode": o.mode,
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


def resume(
    ws: Workspace,
    job_id: str,
    *,
    target: str | None = None,
    progress: Progress = SILENT,
    stop: threading.Event | None = None,
) -> JobResult:
    """Run a job's pending items again (after Ctrl-C, or to retry on other nodes).

    ``stop`` set (by another thread: the HTTP API's cancel) ends the run as Ctrl-C does:
    the shards running are abandoned and their items stay pending, the job is
    'interrupted', its files are removed from the nodes, and Interrupted is raised."""
    get(ws, job_id)  # an unknown job is refused before its lock is made
    with job_lock(ws, job_id, progress):
        job = get(ws, job_id)
        if job["state"] == "complete":
            raise UsageError(f"Job {job_id} is complete; nothing to resume.")
        hosts = resolve_hosts(ws.inventory, target or job["target"])
        return _execute(ws, job_id, hosts, progress, stop)


def _usable(ws, model: str, version: str, mode: str, hosts: list[str], progress: Progress):
    """:func:`usable_nodes`; in pull mode, only those with a queue user."""
    nodes, skipped = usable_nodes(ws, model, version, hosts, progress, pull=mode == "pull")
    return (pull.pullers(ws, nodes, skipped) if mode == "pull" else nodes), skipped


class _Stopped(Exception):
    """The caller's ``stop`` event was set: handled like Ctrl-C."""


def _execute(
    ws: Workspace,
    job_id: str,
    hosts: list[str],
    progress: Progress,
    stop: threading.Event | None,
    checked: tuple[list[str], dict[str, str]] | None = None,
) -> JobResult:
    """Run the job's pending items on the usable nodes of ``hosts`` (``checked``: as
    :func:`usable_nodes` found them just before; else they are checked now)."""
    job = get(ws, job_id)
    if job["mode"] == "pull":
        pull.check_queue(ws)
    db = evcdb.workspace_db(ws)
    nodes, skipped = checked or _usable(
        ws, job["model"], job["version"], job["mode"], hosts, progress
    )
    pending = ingest.begin(db, job_id, skipped)
    if job["mode"] == "pull":
        return pull.execute(ws, job, nodes, pending, progress, stop)
    ran_before = db.execute("SELECT 1 FROM shards WHERE job_id = ? LIMIT 1", [job_id]).fetchone()
    params = json.loads(job["params"])
    tputs = throughputs(ws, job["model"], job["version"])
    stats = [schedule.NodeStats(n, throughput=tputs.get(n)) for n in nodes]
    shards = schedule.plan(pending, stats, job["strategy"], params.get("shard_size"))
    paced = job["strategy"] == "dynamic" and not params.get("shard_size")
    costs = shard_costs(ws, job["model"], job["version"]) if paced else {}
    pacer = schedule.Pacer(tputs, costs=costs) if paced else None
    queue = schedule.WorkQueue(shards, nodes, job["retries"], pacer)
    runner = _Runner(ws, job, queue)
    threads = [
        threading.Thread(target=runner.work, args=(n,), daemon=True)
        for n in nodes for _ in range(RUNNERS_PER_NODE)
    ]  # fmt: skip
    try:  # from the first thread's start: a Ctrl-C while the others start is caught too
        if ran_before:
            _clean_nodes(ws, job, nodes, progress)
        with progress.task(f"job {job_id}") as line:
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                if stop is not None and stop.is_set():
                    raise _Stopped
                line.status(runner.progress(len(pending)))
                for t in threads:
                    t.join(timeout=0.5)
    except (KeyboardInterrupt, _Stopped) as exc:
        by = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else "stopped"
        runner.stop.set()
        ingest.interrupt(db, job_id)
        again = " (Ctrl-C again skips it)" if by == "Ctrl-C" else ""
        progress.log(f"removing job {job_id}'s files from the nodes{again}")
        with contextlib.suppress(Exception, KeyboardInterrupt):  # never hides the interrupt
            _clean_nodes(ws, job, nodes, progress)
        what = "interrupted" if by == "Ctrl-C" else "stopped"
        raise Interrupted(
            f"Job {job_id} {what}; its pending items stay pending: "
            f"`evc infer resume {job_id}` runs them."
        ) from None
    try:
        _finish(db, job_id, runner)
    except sqlite3.OperationalError as exc:  # e.g. "database is locked" past the busy timeout
        raise EVCError(
            f"Job {job_id} ran, but its end could not be recorded ({exc}); what it stored is "
            f"kept: `evc infer resume {job_id}` runs the items still pending."
        ) from None
    shutil.rmtree(job_dir(ws, job_id) / "shards", ignore_errors=True)
    return status(ws, job_id)


def _clean_nodes(ws: Workspace, job: dict, nodes: list[str], progress: Progress) -> None:
    """Remove what earlier runs of ``job`` left in the nodes' model folders (shards the
    server has not run yet, answers nobody read), so that the server runs none of them
    and the module still waiting for one (after Ctrl-C, it lives on) gives up. Best
    effort: a node that does not answer keeps its files, which cannot answer another
    dispatch."""
    try:
        run = run_playbook(
            ws, "infer_cleanup.yml", ",".join(nodes), progress=progress,
            extravars={"evc_serve_dir": f"{JOBS_DIR}/models/{job['model']}",
                       "evc_prefix": f"{job['id']}-"},
        )  # fmt: skip
    except EVCError as exc:
        progress.log(f"could not remove job {job['id']}'s files from the nodes: {exc}")
        return
    removed = sum(len(h.outputs.get("remove", {}).get("removed") or []) for h in run.hosts.values())
    if removed:
        progress.log(f"removed {removed} files an earlier run of job {job['id']} left on the nodes")


def _finish(db, job_id: str, runner: _Runner) -> None:
    """Record the job's end: items of shards that failed for good, or that no node
    could take, get their error (:func:`evc.infer.ingest.finish`)."""
    queue = runner.queue
    gone = "; ".join(runner.dropped.values()) or "none ran it"
    reasons = [(s.items, f"failed after {s.attempt} attempt(s): {s.error}")
               for s in queue.failures()]  # fmt: skip
    reasons += [(s.items, f"no node left to run it ({s.error or gone})") for s in queue.stranded()]
    ingest.finish(db, job_id, reasons, runner.unstored)


class _Runner:
    """What one node's thread does: take a shard, ship it, run it, ingest it."""

    def __init__(self, ws: Workspace, job: dict, queue: schedule.WorkQueue):
        self.ws, self.job, self.queue = ws, job, queue
        self.stop = threading.Event()
        self.done_items = 0
        self.unstored: list[tuple[int, dict]] = []  # shard rows the database refused
        self.dropped: dict[str, str] = {}  # node -> why it was given up (a sentence)
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
            if self.stop.is_set():  # taken while Ctrl-C was handled: not sent
                return
            outcome, error = self._run_shard(node, shard)
            if self.stop.is_set():
                return
            if outcome == "done":
                failures = 0
            elif outcome == "lost":
                self._drop(node, f"{node} was lost: {error}")
                return
            elif outcome == "stale":  # its shards re-run elsewhere, costing no attempt
                self._drop(node, error)
                return
            else:  # re-run elsewhere; only the node's own failures count against it
                self.queue.failed(shard, node, error)
                failures += outcome == "failed"
                if failures >= BROKEN_AFTER:  # e.g. its model container is gone
                    self._drop(node, f"{node} failed {failures} shards in a row: {error}")
                    return

    def _drop(self, node: str, why: str) -> None:
        with self._lock:
            self.dropped.setdefault(node, why)
        self.queue.node_lost(node)

    def _run_shard(self, node: str, shard: schedule.Shard) -> tuple[str, str | None]:
        """Run ``shard`` on ``node``: ('done' | 'failed' | 'lost' | 'stale' | 'unstored', why).
        Never raises: whatever goes wrong is this shard's failure, with its reason, so
        the thread lives on and the queue always hears of the shard. 'unstored': the
        database refused its results (locked past the busy timeout), no fault of the
        node's."""
        db = evcdb.workspace_db(self.ws)
        name = dispatch_name(self.job["id"], shard.index, shard.attempt)
        archive = self.dir / f"{name}.tar"
        shard_id = None
        try:
            shard_id = db["shards"].insert({
                "job_id": self.job["id"], "idx": shard.index, "node": node,
                "attempt": shard.attempt, "items": len(shard.items), "state": "running",
                "started": time.time(),
            }).last_pk  # fmt: skip
            outcome, error = self._dispatch(db, node, shard, shard_id, name, archive)
        except sqlite3.Error as exc:
            outcome, error = "unstored", f"the job database: {exc}"
        except Exception as exc:  # a removed device, ansible that did not run, a bug
            outcome, error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            archive.unlink(missing_ok=True)
        if outcome != "done" and shard_id is not None:
            state = "interrupted" if self.stop.is_set() else _SHARD_STATE.get(outcome, outcome)
            row = {"state": state, "finished": time.time(), "error": error}
            try:
                db["shards"].update(shard_id, row)
            except sqlite3.Error:  # stored when the job ends
                with self._lock:
                    self.unstored.append((shard_id, row))
        return outcome, error

    def _dispatch(self, db, node: str, shard, shard_id: int, name: str, archive):
        """Archive the shard, run it on the node, store its results."""
        try:
            refused = build_archive(archive, Path(self.job["data_dir"]), shard.items, self.params)
        except OSError as exc:
            return "failed", f"cannot stage the shard: {exc}"
        sent = [i for i in shard.items if i not in refused]
        records: dict[str, Record] = {}
        if self.stop.is_set():  # after Ctrl-C's cleanup of the nodes has begun
            return "failed", "interrupted before it was sent"
        if sent:  # else every item was refused: nothing to send
            run = run_playbook(
                self.ws, "infer_shard.yml", node,
                task_timeout=SHARD_TIMEOUT_S + 2 * len(sent) + 30,
                extravars={
                    "evc_model": self.job["model"], "evc_shard": name,
                    "evc_archive": str(archive), "evc_jobs_dir": JOBS_DIR,
                    "evc_timeout": SHARD_TIMEOUT_S + 2 * len(sent),
                },
            )  # fmt: skip
            host = run.hosts[node]
            if host.state == "unreachable":
                return "lost", host.message or "unreachable"
            if host.state == "failed" and _CONTAINER_GONE.search(host.message or ""):
                ref = f"{self.job['model']}:{self.job['version']}"
                return "stale", f"{fleet.not_running(ref, node)} ({host.message})"
            if host.state == "failed":
                return "failed", f"{host.failed_task}: {host.message}"
            try:
                records = parse_answer(host.outputs.get("results", {}).get("jsonl", ""), sent)
            except ValueError as exc:
                return "failed", f"unusable results: {exc}"
        return self._ingest(db, shard, shard_id, node, records, refused)

    def _ingest(self, db, shard, shard_id: int, node: str, records: dict[str, Record],
                refused: dict[str, str]) -> tuple[str, None]:  # fmt: skip
        """Store the shard's results in one transaction, then report it done (a failed
        transaction leaves its items pending for the retry). Exactly once: a result
        only turns a pending row final, so a late or repeated report changes nothing."""
        if not self.queue.holds(shard):  # a stale report (node given up): drop it
            return "lost", "report came after the node was given up"
        if self.stop.is_set():  # the job was stopped: its items stay pending, as promised
            return "failed", "stopped before its results were stored"
        with evcdb.transaction(db):
            for rec in records.values():
                ingest.store_item(db, self.job["id"], rec, shard_id, node, shard.attempt)
            for item, why in refused.items():
                rec = Record(item=item, ok=False, error=f"not sent: {why}")
                ingest.store_item(db, self.job["id"], rec, shard_id, None, shard.attempt)
            db["shards"].update(shard_id, {"state": "done", "finished": time.time()})
        self.queue.done(shard, sum(r.latency_ms or 0 for r in records.values()) / 1000)
        with self._lock:
            self.done_items += len(shard.items)
        return "done", None
