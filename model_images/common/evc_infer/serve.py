"""``evc-infer --serve DIR``: the model container's main process.

It loads the model once and runs every shard dropped into the job volume, in
arrival order, so a shard costs no interpreter start, import or model load. The
protocol, under DIR:

- ``inbox/NAME.tar``: a shard. ``shard.json`` holds ``{"conf", "iou", "imgsz"}``
  (nulls for the model's defaults); every other regular file is an item, named by
  its path in the archive. Written under a dot-name and renamed into place, so a
  file ending in ``.tar`` is complete. The server deletes it once it has run it; a
  controller that gives up waiting deletes it first, and then no answer is written.
- ``outbox/NAME.jsonl``: one results.jsonl line per item (the ``--input`` format),
  renamed into place when complete; ``outbox/NAME.error`` instead when the shard
  itself is unusable (bad archive, bad parameters).
- ``serve.alive``: touched between items and every second while idle, so a waiting
  controller can tell a busy server from a dead one.
"""

import json
import os
import shutil
import signal
import sys
import tarfile
import time
from pathlib import Path, PurePosixPath

from evc_infer import UsageError, one_line
from evc_infer.home import load_config, load_model, resolve_params
from evc_infer.runner import infer_one, warm_up

POLL_S = 0.1  # while shards keep coming
IDLE_POLL_S = 0.5  # after IDLE_AFTER_S without one: an idle edge node should stay idle
IDLE_AFTER_S = 10.0
ALIVE_EVERY_S = 1.0
PARAMS_FILE = "shard.json"


def _members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Regular files with safe relative names; anything else is refused."""
    files = []
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise UsageError(f"unsafe path in the shard archive: {member.name}")
        if member.isfile():
            files.append(member)
        elif not member.isdir():
            raise UsageError(f"not a regular file in the shard archive: {member.name}")
    return files


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    os.replace(part, path)


def run_shard(model, config: dict, archive: Path, work: Path, alive: Path) -> str:
    """The results.jsonl text of one shard archive; UsageError when it is unusable."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tar:
            members = _members(tar)
            for m in members:
                target = work / m.name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (tarfile.TarError, OSError) as exc:
        raise UsageError(f"unreadable shard archive: {one_line(exc)}") from None
    names = sorted(m.name for m in members if m.name != PARAMS_FILE)
    given = json.loads((work / PARAMS_FILE).read_text()) if (work / PARAMS_FILE).exists() else {}
    params = resolve_params(config, given.get("conf"), given.get("iou"), given.get("imgsz"))
    lines = []
    for name in names:
        record = infer_one(model, work / name, name, params, config["limits"]["max_pixels"])
        lines.append(json.dumps(record))
        alive.touch()
    return "".join(line + "\n" for line in lines)


def _arrived(inbox: Path) -> list[tuple[float, str, Path]]:
    """(mtime, name, path) of each complete shard; one deleted meanwhile is left out."""
    found = []
    for path in inbox.glob("[!.]*.tar"):
        try:
            found.append((path.stat().st_mtime, path.name, path))
        except FileNotFoundError:
            continue
    return found


def serve(home: Path, jobs: Path) -> int:
    """Serve shards from ``jobs`` until SIGTERM/SIGINT (exit 0)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 has no default handler
    config = load_config(home)
    model, _ = load_model(home, config)
    warm_up(model, resolve_params(config))
    inbox, outbox, alive = jobs / "inbox", jobs / "outbox", jobs / "serve.alive"
    for folder in (inbox, outbox):
        folder.mkdir(parents=True, exist_ok=True)
    print(f"evc-infer: serving {config['name']} from {jobs}", flush=True)
    touched = last_shard = time.monotonic()
    alive.touch()
    while True:
        now = time.monotonic()
        if now - touched >= ALIVE_EVERY_S:
            alive.touch()
            touched = now
        shards = sorted(_arrived(inbox))
        if not shards:
            time.sleep(POLL_S if now - last_shard < IDLE_AFTER_S else IDLE_POLL_S)
            continue
        archive = shards[0][2]
        name, work = archive.stem, jobs / "work" / archive.stem
        try:
            try:
                answer = outbox / f"{name}.jsonl", run_shard(model, config, archive, work, alive)
            except (UsageError, ValueError) as exc:
                answer = outbox / f"{name}.error", one_line(exc)
            if archive.exists():  # else the controller gave up on it: nobody would read it
                _write_atomic(*answer)
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)
            last_shard = time.monotonic()
