"""Stand-ins for the node side of pull mode (the puller in the model images lands from
another branch): each :class:`StandIn` logs in as its device's ACL user, reads the
device's announcement stream and runs a real :class:`evc.queue.streams.Worker` for each
announced job of its model, answering Record-valid dicts (results.jsonl lines) after
``per_item`` seconds an item; a job's worker stops once its announcement is gone.

Until the puller branch adds the announcement selector to ``acl.device_rule``,
:func:`with_announcements` adds it as the contract words it.

Run as a program (``python -m tests.unit.pull_support WS DEVICE=PER_ITEM ...``), the
stand-ins run in their own process until stdin closes, so that the controller's
``time.process_time()`` counts the controller alone.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import redis

from evc.config import Workspace
from evc.queue import acl
from evc.queue.streams import Shard, Worker, announce_key
from tests.unit import queue_support as qs


def with_announcements(rule_of=acl.device_rule):
    """``acl.device_rule`` plus the contract's read-only selector on the device's own
    announcement stream (kept as is when the rule has one)."""

    def rule(password_hash, device, jobs):
        rules = rule_of(password_hash, device, jobs)
        if any(announce_key(device) in r for r in rules):
            return rules
        return [*rules, f"(~{announce_key(device)} +xread +xrange)"]

    return rule


def answer(shard: Shard, per_item: float = 0.0) -> list[dict]:
    """What a healthy model server answers: a face per image; 'corrupt' items fail."""
    time.sleep(per_item * len(shard.items))
    out = []
    for item, data in zip(shard.items, shard.payloads or [], strict=True):
        if b"corrupt" in data:
            out.append({"item": item, "ok": False, "error": "cannot identify image file"})
            continue
        det = {"label": "face", "class_id": 0, "score": 0.9, "box": [1.0, 2.0, 30.0, 40.0]}
        out.append({"item": item, "ok": True, "latency_ms": per_item * 1000, "width": 640,
                    "height": 480, "detections": [det]})  # fmt: skip
    return out


class Died(BaseException):
    """A node that stops mid-shard: not an Exception, so nothing in the worker survives."""


class StandIn:
    """One node's puller. ``process`` (a shard -> its dicts) replaces :func:`answer`."""

    def __init__(self, ws: Workspace, device: str, *, model: str = "faces",
                 per_item: float = 0.0, process=None, poll: float = 0.1):  # fmt: skip
        self.ws, self.device, self.model, self.poll = ws, device, model, poll
        self.process = process or (lambda shard: answer(shard, per_item))
        self.workers: dict[str, tuple[Worker, threading.Event, threading.Thread]] = {}
        self.shards = 0  # reported by this node, every job
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> StandIn:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        for _, halt, thread in self.workers.values():
            halt.set()
            thread.join(5)
        self.thread.join(5)

    def _run(self) -> None:
        r = qs.device(self.ws, self.device, retries=0)
        while not self.stop.wait(self.poll):
            try:
                announced = {
                    f[b"job"].decode(): f for _, f in r.xrange(announce_key(self.device))
                    if f[b"model"].decode() == self.model
                }  # fmt: skip
            except redis.RedisError:  # restarting, or this device was revoked
                continue
            for job, fields in announced.items():
                if job not in self.workers:
                    self._start(job, float(fields[b"lease"]))
            for job, (_, halt, _) in self.workers.items():
                if job not in announced:
                    halt.set()

    def _start(self, job: str, lease: float) -> None:
        def process(shard: Shard) -> list[dict]:
            out = self.process(shard)
            self.shards += 1
            return out

        worker = Worker(qs.device(self.ws, self.device), job, self.device, process,
                        lease=lease, block=0.1)  # fmt: skip
        halt = threading.Event()
        thread = threading.Thread(target=_until_dead, args=(worker, halt), daemon=True)
        self.workers[job] = (worker, halt, thread)
        thread.start()


def _until_dead(worker: Worker, halt: threading.Event) -> None:
    try:
        worker.run(halt)
    except (Died, redis.ResponseError):  # NOPERM: the job ended, its grant revoked
        pass


def main(argv: list[str]) -> int:
    """WS DEVICE=SECONDS_PER_ITEM ...: stand-ins until stdin closes."""
    ws = Workspace.load(Path(argv[0]))
    stand_ins = [
        StandIn(ws, d, per_item=float(s)).start() for d, s in (a.split("=") for a in argv[1:])
    ]
    print(json.dumps({"ready": [s.device for s in stand_ins]}), flush=True)
    sys.stdin.read()
    for s in stand_ins:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
