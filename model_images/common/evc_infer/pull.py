"""``evc-infer --pull DIR --queue QDIR``: the node's pull-mode worker (the puller container).

It runs beside the model container (``--serve DIR``) and shares its job volume. It has a
network and the model container has none: the process that parses untrusted inputs never
reaches anything, this one only moves bytes. From ``QDIR`` (written by cert_push.yml):
``queue.json`` (``host``, ``port``, ``user`` = this device, ``password``) and ``ca.crt``
(the workspace CA: the queue's certificate is verified, for the name ``host``).

It follows this device's job announcements (``evc:node:DEVICE:jobs``, the only key it
may read besides the work of the jobs it is granted): every second while it works, and
while idle by a blocking read that a new announcement ends at once. Each announced job
of this container's model (``EVC_MODEL_NAME`` and ``EVC_MODEL_VERSION``, set by the
deploy playbook) gets a :class:`evc_infer.streams.Worker`; a job whose announcement is
gone loses its worker.
The workers take turns in one thread, so the puller holds one shard at most.

A shard is run by the model server: written as a shard archive into ``DIR/inbox`` (a
dot-name, then renamed, as serve.py wants), answered in ``DIR/outbox``. A ``.error``
answer becomes an error for each item. While ``serve.alive`` is stale no shard is taken,
and a server that falls silent mid-shard makes the shard fail: it stays pending in Redis
and after its lease another node, or this one, reclaims it.
"""

import io
import json
import os
import re
import secrets
import signal
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from evc_infer import UsageError, one_line
from evc_infer.home import load_config
from evc_infer.shard import PARAM_KEYS, PARAMS_FILE
from evc_infer.streams import Shard, Worker, announce_key, puller_name

ANNOUNCEMENTS_EVERY_S = 1.0
IDLE_WAIT_S = 5.0  # idle: one blocking read this long (a new announcement ends it at once)
BLOCK_S = 0.5  # each worker's wait for a new shard, per turn
POLL_S = 0.025  # for the model server's answer
STALE_AFTER_S = 120.0  # as push mode's evc_shard script
WITHDRAWN_AFTER_S = 5.0  # the server writes its answer just after it removes the shard
PREFIX = "pull@"  # no job id holds '@': never a push-mode shard's name
LEASE_RANGE = (0.1, 3600.0)
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # evc.names.JOB_ID


class ServerSilent(RuntimeError):
    """The model server stopped answering: the shard is left pending, for another node."""


def load_settings(qdir: Path) -> dict:
    """queue.json, checked; UsageError naming what is wrong."""
    path = qdir / "queue.json"
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {one_line(exc)}") from None
    types = {"host": str, "port": int, "user": str, "password": str}
    if not isinstance(settings, dict) or any(
        not isinstance(settings.get(k), t) or isinstance(settings.get(k), bool)
        for k, t in types.items()
    ):
        raise UsageError(f"{path}: expected an object of {', '.join(types)}")
    if not (qdir / "ca.crt").is_file():
        raise UsageError(f"no ca.crt in {qdir}: the queue's certificate cannot be verified")
    return settings


def connect(settings: dict, ca: Path, name: str | None = None):
    """A verified TLS connection as the device's ACL user, named ``name``."""
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    return redis.Redis(
        host=settings["host"], port=settings["port"], username=settings["user"],
        password=settings["password"], ssl=True, ssl_ca_certs=str(ca),
        ssl_cert_reqs="required", ssl_check_hostname=True, socket_timeout=30,
        socket_connect_timeout=10, client_name=name,
        retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), 3),
    )  # fmt: skip


@dataclass(frozen=True)
class Job:
    id: str
    params: dict  # conf, iou, imgsz: null for the model's default
    lease: float


def parse_announcement(fields: dict, model: str, version: str | None) -> Job | None:
    """The job of one announcement if it is for this model (and version) and well formed."""
    try:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        params = json.loads(f.get("params") or "{}")
        lease = float(f["lease"])
        if (
            f["model"] != model
            or (version and f.get("version") != version)
            or not _JOB_ID.match(f["job"])
            or not isinstance(params, dict)
            or set(params) - set(PARAM_KEYS)
            or not LEASE_RANGE[0] <= lease <= LEASE_RANGE[1]
        ):
            return None
    except (KeyError, ValueError, AttributeError):  # UnicodeDecodeError is a ValueError
        return None
    return Job(f["job"], {k: params.get(k) for k in PARAM_KEYS}, lease)


def item_errors(items: list[str], error: str) -> list[dict]:
    return [{"item": i, "ok": False, "error": error} for i in items]


class ModelServer:
    """The model container's server, reached through the shared job volume (serve.py)."""

    def __init__(self, jobs: Path, limits: dict, stale_after: float = STALE_AFTER_S):
        self.inbox, self.outbox, self.alive = jobs / "inbox", jobs / "outbox", jobs / "serve.alive"
        self.limits, self.stale_after = limits, stale_after

    def silent_for(self) -> float:
        try:
            return time.time() - self.alive.stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    def up(self) -> bool:
        return self.silent_for() <= self.stale_after

    def clean(self) -> None:
        """What a puller stopped mid-shard left: its shard would run for no one."""
        for folder in (self.inbox, self.outbox):
            for path in [*folder.glob(f"{PREFIX}*"), *folder.glob(f".{PREFIX}*")]:
                path.unlink(missing_ok=True)

    def _refusal(self, shard: Shard) -> str | None:
        if shard.payloads is None:
            return "the shard carries no payloads (a node cannot resolve references)"
        if len(shard.items) + 1 > self.limits["shard_entries"]:
            return f"the shard holds {len(shard.items)} items, over the model's limit"
        if shard.size > self.limits["shard_bytes"]:
            return f"the shard holds {shard.size} bytes, over the model's limit"
        return None

    def run(self, shard: Shard, params: dict) -> list[dict]:
        """One result dict per item (the model server's results.jsonl lines); raises
        ServerSilent when the server stops answering."""
        refusal = self._refusal(shard)
        if refusal:
            return item_errors(shard.items, refusal)
        name = f"{PREFIX}{shard.index}-{secrets.token_hex(6)}"
        archive = self.inbox / f"{name}.tar"
        results, error = self.outbox / f"{name}.jsonl", self.outbox / f"{name}.error"
        try:
            try:
                self._write(archive, shard, params)
            except (ValueError, tarfile.TarError) as exc:  # an item name tar cannot hold
                return item_errors(shard.items, f"cannot write the shard: {one_line(exc)}")
            text, refused = self._wait(archive, results, error)
        finally:
            for path in (archive, results, error):
                path.unlink(missing_ok=True)
        if refused is not None:
            return item_errors(shard.items, refused)
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _write(self, archive: Path, shard: Shard, params: dict) -> None:
        part = archive.with_name(f".{archive.name}.part")
        try:
            with tarfile.open(part, "w") as tar:
                for name, data in [
                    (PARAMS_FILE, json.dumps(params).encode()),
                    *zip(shard.items, shard.payloads, strict=True),
                ]:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))  # shares the bytes
            os.replace(part, archive)
        finally:
            part.unlink(missing_ok=True)

    def _wait(self, archive: Path, results: Path, error: Path) -> tuple[str, str | None]:
        gone_since = None
        while True:
            if results.exists():
                return results.read_text(), None
            if error.exists():
                return "", error.read_text().strip()
            now = time.monotonic()
            if archive.exists():
                gone_since = None
            elif gone_since is None:
                gone_since = now
            elif now - gone_since > WITHDRAWN_AFTER_S:
                raise ServerSilent("the shard left the inbox unanswered")
            silent = self.silent_for()
            if silent > self.stale_after:
                raise ServerSilent(f"the model server has not answered for {silent:.0f} s")
            time.sleep(POLL_S)


class _Say:
    """Prints a line when it differs from the last one: a state, not a flood."""

    def __init__(self):
        self.last = None

    def __call__(self, line: str) -> None:
        if line != self.last:
            print(f"evc-infer: {line}", file=sys.stderr, flush=True)
            self.last = line


def pull(home: Path, jobs: Path, qdir: Path, *, stale_after: float = STALE_AFTER_S) -> int:
    """Pull and run shards until SIGTERM/SIGINT (exit 0)."""
    import redis

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 has no default handler
    config = load_config(home)
    model = os.environ.get("EVC_MODEL_NAME")
    if not model:
        raise UsageError("EVC_MODEL_NAME is not set (the deploy playbook sets it)")
    version = os.environ.get("EVC_MODEL_VERSION") or None
    image = os.environ.get("EVC_MODEL_IMAGE", "")  # set by the deploy playbook
    settings = load_settings(qdir)
    device = settings["user"]
    server = ModelServer(jobs, config["limits"], stale_after)
    server.clean()
    ready = server.up()
    names = {up: puller_name(model, version or "", image, ready=up) for up in (True, False)}
    r = connect(settings, qdir / "ca.crt", names[ready])
    say, stop = _Say(), threading.Event()
    print(f"evc-infer: pulling {model} jobs for {device}", flush=True)
    workers: dict[str, Worker] = {}
    checked, seen = 0.0, "0-0"
    while True:
        try:
            if server.up() != ready:  # what the controller's CLIENT LIST reads
                ready = not ready
                _rename(r, names[ready])
            if time.monotonic() - checked >= ANNOUNCEMENTS_EVERY_S:
                checked = time.monotonic()
                seen = _follow(r, device, model, version, workers, server, say)
            if not workers:  # woken by the next announcement: a job starts at once
                block = int(IDLE_WAIT_S * 1000)
                if r.xread({announce_key(device): seen}, count=1, block=block):
                    checked = 0.0
            elif not server.up():
                say(f"the model server has been silent for {server.silent_for():.0f} s")
                time.sleep(ANNOUNCEMENTS_EVERY_S)
            else:
                for worker in list(workers.values()):
                    worker.step(stop)
        except redis.RedisError as exc:
            say(f"the queue: {type(exc).__name__}: {one_line(exc)}")
            time.sleep(ANNOUNCEMENTS_EVERY_S)


def _rename(r, name: str) -> None:
    """Name this connection ``name``, and any the pool makes after a reconnect."""
    r.connection_pool.connection_kwargs["client_name"] = name
    r.client_setname(name)


def _follow(r, device, model, version, workers: dict, server: ModelServer, say) -> str:
    """Start a worker per announced job of this model, drop those no longer announced;
    the last announcement's id."""
    announced, entries = {}, r.xrange(announce_key(device))
    for _entry, fields in entries:
        job = parse_announcement(fields, model, version)
        if job:
            announced[job.id] = job
    for job_id in set(workers) - set(announced):
        del workers[job_id]
        say(f"job {job_id} is over")
    for job_id in sorted(set(announced) - set(workers)):
        job = announced[job_id]
        workers[job_id] = Worker(
            r, job_id, device, _processor(server, job, say), lease=job.lease, block=BLOCK_S
        )
        say(f"working on job {job_id}")
    return entries[-1][0] if entries else "0-0"


def _processor(server: ModelServer, job: Job, say):
    def process(shard: Shard) -> list[dict]:
        try:
            return server.run(shard, job.params)
        except Exception as exc:  # the Worker leaves the shard pending: say why
            say(f"job {job.id} shard {shard.index} left for another node: {one_line(exc)}")
            raise

    return process
