"""A fake fleet for unit tests of fleet work: it stands in for ``run_playbook`` (and so
for ansible-runner and the nodes), and a workspace with devices and a model to run.

The fake answers playbooks the way the real nodes would, closely enough for the job
machinery's own logic to be tested with its real threads and database:
``infer_shard.yml`` reads the shard's archive as the model server does (a member that
is not a regular file refuses the whole shard) and answers one results line per item;
``infer_cleanup.yml`` removes what the fake nodes keep of a job; ``fleet_status.yml``
reports the containers the database says run (a fake node runs what it was sent, in
this process or an earlier one), but those in ``stopped``. Failures are planted per
node with ``plant``.
"""

from __future__ import annotations

import json
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from evc import db as evcdb
from evc import devices, registry
from evc.ansible import HostResult, RunResult
from evc.model import catalogue
from evc.model.deployments import current
from evc.targets import resolve_hosts


@dataclass
class Dispatch:
    """One shard as a fake node received it."""

    node: str
    name: str
    files: dict[str, bytes]  # item -> contents, as the archive held them
    lines: list[dict] = field(default_factory=list)  # the answer a healthy node gives

    @property
    def items(self) -> list[str]:
        return list(self.files)


# An answer: what a node does with a dispatch instead of answering it well. It returns
# the results text (a str) or a HostResult, or raises (as run_playbook can).
Answer = Callable[[Dispatch], "str | HostResult"]


def jsonl(lines: list[dict]) -> str:
    return "".join(json.dumps(line) + "\n" for line in lines)


def failed(node: str, message: str) -> HostResult:
    return HostResult(node, "failed", failed=1, failed_task="results", message=message)


class FakeFleet:
    """Stands in for ``run_playbook``: records every call and each run in the database
    (``evc.db.record_run``, as the real one does).

    ``down``: nodes that are unreachable; ``flaky``: nodes whose first shard fails.
    ``orphans`` holds the dispatches a fake node is still waiting on after the
    controller gave up on them (an interrupted run): like the real node's module left
    waiting after Ctrl-C, an orphan swallows the answer of any later dispatch of the
    same name, which then waits in vain (here: fails at once, with the real message).
    ``infer_cleanup.yml`` withdraws a job's orphans from the nodes it reaches.
    """

    def __init__(self, down=(), flaky=()):
        self.down, self.flaky = set(down), set(flaky)
        self.plants: dict[str, list[Answer]] = {}
        self.calls: list[tuple[str, str, dict]] = []  # (playbook, target, extravars)
        self.dispatches: list[Dispatch] = []
        self.orphans: set[tuple[str, str]] = set()  # (node, dispatch name)
        self.cleanup_reaches = True
        self.stopped: set[tuple[str, str]] = set()  # (node, model) whose container is gone
        self._lock = threading.Lock()

    def plant(self, node: str, *answers: Answer) -> None:
        """``node``'s next shards get these answers, one per shard, in order."""
        with self._lock:
            self.plants.setdefault(node, []).extend(answers)

    def served(self, node: str | None = None) -> list[Dispatch]:
        """Dispatches answered (by ``node``), in order."""
        with self._lock:
            return [d for d in self.dispatches if node in (None, d.node)]

    def __call__(self, ws, name, target="all", *, extravars=None, **_):
        with self._lock:
            self.calls.append((name, target, dict(extravars or {})))
        hosts = resolve_hosts(ws.inventory, target)  # a removed device raises, as it would
        started = time.time()
        results = {}
        for h in hosts:
            if h in self.down or (name == "infer_cleanup.yml" and not self.cleanup_reaches):
                why = "ssh: connect to host: No route to host"
                results[h] = HostResult(h, "unreachable", unreachable=1, message=why)
            elif name == "infer_shard.yml":
                results[h] = self._shard(h, extravars)
            elif name == "infer_cleanup.yml":
                results[h] = self._cleanup(h, extravars["evc_prefix"])
            elif name == "fleet_status.yml":
                results[h] = self._fleet_state(ws, h)
            else:
                results[h] = HostResult(h, "changed", ok=3, changed=1)
        time.sleep(0.05)
        bad = any(r.state in ("failed", "unreachable") for r in results.values())
        run = RunResult(name, target, uuid.uuid4().hex[:12], "", started, time.time(),
                        2 if bad else 0, results)  # fmt: skip
        evcdb.record_run(evcdb.workspace_db(ws), run)
        return run

    def _fleet_state(self, ws, host: str) -> HostResult:
        with self._lock:
            containers = [
                {"name": f"evc-model-{r['model']}", "image": r["image"], "state": "running",
                 "digests": []}
                for r in current(ws)
                if r["node"] == host and (host, r["model"]) not in self.stopped
            ]  # fmt: skip
        report = {"containers": containers, "ca_sha256": None, "credential": True}
        printed = json.dumps({"fleet": report})  # what files/evc_telemetry.py prints
        return HostResult(host, "ok", ok=1, outputs={"fleet state": {"stdout": printed}})

    def _cleanup(self, host: str, prefix: str) -> HostResult:
        with self._lock:
            mine = {o for o in self.orphans if o[0] == host and o[1].startswith(prefix)}
            self.orphans -= mine
        removed = [f"inbox/{name}.tar" for _, name in sorted(mine)]
        return HostResult(host, "changed" if removed else "ok", ok=1, changed=int(bool(removed)),
                          outputs={"remove": {"removed": removed}})  # fmt: skip

    def _shard(self, host: str, extravars: dict) -> HostResult:
        name = extravars["evc_shard"]
        if (host, name) in self.orphans:  # it took this dispatch's answer
            return failed(host, f"no results after {extravars['evc_timeout']:.0f} s")
        if host in self.flaky:  # its first shard fails, later ones work
            self.flaky.discard(host)
            return HostResult(host, "failed", failed=1, failed_task="run shard",
                              message="container evc-model-faces is not running")  # fmt: skip
        with tarfile.open(extravars["evc_archive"]) as tar:
            members = tar.getmembers()
            odd = [m.name for m in members if not m.isfile()]
            if odd:  # what the model server does with a link member
                return failed(host, "the model server refused the shard: not a regular file "
                                    f"in the shard archive: {odd[0]}")  # fmt: skip
            files = {m.name: tar.extractfile(m).read() for m in members if m.name != "shard.json"}
        shard = Dispatch(host, name, files, _answer_lines(list(files)))
        with self._lock:
            answers = self.plants.get(host)
            answer = answers.pop(0) if answers else None
        time.sleep(0.05)
        result = answer(shard) if answer else jsonl(shard.lines)  # may raise: planted
        with self._lock:
            self.dispatches.append(shard)
        if isinstance(result, HostResult):
            return result
        return HostResult(host, "changed", ok=1, changed=1, outputs={"results": {"jsonl": result}})


def _answer_lines(items: list[str]) -> list[dict]:
    """What a healthy node answers: a face in each image, a person in every other one;
    an item named 'corrupt' is an image the node cannot decode."""
    lines = []
    for i, item in enumerate(items):
        if "corrupt" in item:
            lines.append({"item": item, "ok": False, "error": "cannot identify image file"})
            continue
        eyes = [
            {"name": "right_eye", "x": 203.3, "y": 100.9},
            {"name": "left_eye", "x": 247.4, "y": 108.2},
        ]
        dets = [{"label": "face", "class_id": 0, "score": 0.91, "box": [177, 66, 95, 95],
                 "keypoints": eyes}]  # fmt: skip
        if i % 2:
            dets.append({"label": "person", "class_id": 1, "score": 0.55, "box": [5, 5, 80, 200]})
        lines.append({"item": item, "ok": True, "latency_ms": 30.0 + 7 * i, "width": 640,
                      "height": 480, "detections": dets})  # fmt: skip
    return lines


DEVICES = [
    {"name": "node1", "host": "10.0.0.11", "groups": ["edge", "cam"], "lat": 52.52, "lon": 13.40,
     "status": "online", "arch": "arm64", "accelerator": "nvidia:orin"},
    {"name": "node2", "host": "10.0.0.12", "groups": ["edge"], "lat": 48.14, "lon": 11.58,
     "status": "online", "arch": "amd64", "accelerator": "none"},
    {"name": "node3", "host": "10.0.0.13", "groups": [], "lat": None, "lon": None,
     "status": "offline", "arch": "amd64", "accelerator": "none"},
]  # fmt: skip


def add_devices(ws, db, now: float, rows: list[dict] = DEVICES) -> None:
    """Enrol ``rows`` as devices (straight into the database) and write the inventory."""
    with evcdb.transaction(db):
        db["devices"].insert_all(
            evcdb.device_row({**d, "labels": {"site": d["name"][-1]}, "added_at": now - 7200,
                              "last_seen": now - 30, "os": "Debian 12", "kernel": "6.1",
                              "cpu_count": 4, "mem_bytes": 4 << 30, "disk_bytes": 64 << 30,
                              "docker_version": "20.10.24", "missed": 3 if d["name"] == "node3"
                              else 0})
            for d in rows
        )  # fmt: skip
    devices.regenerate_inventory(ws, db)


def add_model(
    ws, version: str, now: float, name: str = "faces", arches: tuple = ("amd64", "arm64")
) -> None:
    """A built and pushed model NAME:VERSION in the catalogue, one variant per arch (and
    the registry settings that deploys pull it through)."""
    if not (registry.files(ws).root / "registry.json").exists():
        registry.save(ws, registry.RegistrySettings(hosts=["registry"]))
    for i, arch in enumerate(arches):
        catalogue.save(ws, catalogue.Model(
            name=name, version=version, runtime="face-haar", task="detect", arch=arch,
            owner="vision", image=f"registry:5000/evc/{name}:{version}-{arch}",
            image_id="sha256:" + "ab" * 31 + f"{i:02x}", size_bytes=210_000_000,
            weights_source=None, weights_digest=None, built_at=now - 3600, build_s=42.0,
            selftest={"detections": 1}, registry_digest=variant_digest(arch),
            pushed_size=80_000_000, pushed_at=now - 3500,
        ))  # fmt: skip


def variant_digest(arch: str) -> str:
    """The registry digest the fake catalogue gives ``arch``'s variant."""
    return "sha256:" + {"amd64": "cd", "arm64": "ce"}[arch] * 32
