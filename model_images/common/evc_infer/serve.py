"""``evc-infer --serve DIR``: the model container's main process.

It loads the model once and runs every shard dropped into the job volume, in
arrival order, so a shard costs no interpreter start, import or model load. The
protocol, under DIR:

- ``inbox/NAME.tar``: a shard, an uncompressed tar. ``shard.json`` holds
  ``{"conf", "iou", "imgsz"}`` (nulls for the model's defaults); every other regular
  file is an item, named by its path in the archive (what is allowed: shard.py).
  Written under a dot-name and renamed into place, so a file ending in ``.tar`` is
  complete. The server deletes it once it has run it; a controller that gives up
  waiting deletes it first, and then no answer is written.
- ``outbox/NAME.jsonl``: one results.jsonl line per item (the ``--input`` format),
  renamed into place when complete; ``outbox/NAME.error`` instead, one line that says
  why, when the shard itself is unusable (bad archive, bad parameters, over a limit).
  Whatever a shard holds, the server answers it and goes on to the next.
- ``serve.alive``: touched between items and every second while idle, so a waiting
  controller can tell a busy server from a dead one.
"""

import os
import shutil
import signal
import sys
import time
from pathlib import Path

from evc_infer import UsageError, one_line
from evc_infer.home import load_config, load_model, resolve_params
from evc_infer.runner import warm_up
from evc_infer.shard import run_shard

POLL_S = 0.025  # while shards keep coming: what each shard may wait before it starts
IDLE_POLL_S = 0.5  # after IDLE_AFTER_S without one: an idle edge node should stay idle
IDLE_AFTER_S = 10.0
ALIVE_EVERY_S = 1.0


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(f".{path.name}.part")
    part.write_text(text)
    os.replace(part, path)


def _arrived(inbox: Path) -> list[tuple[float, str, Path]]:
    """(mtime, name, path) of each complete shard; one deleted meanwhile is left out.

    Whatever the name holds (a symlink, a folder) is a shard, to be answered and removed.
    """
    found = []
    for path in inbox.glob("[!.]*.tar"):
        try:
            found.append((path.lstat().st_mtime, path.name, path))
        except FileNotFoundError:
            continue
    return found


def _answer(model, config: dict, archive: Path, work: Path, alive: Path) -> tuple[str, str]:
    """(suffix, text) of the answer to one shard; never raises for what the shard holds."""
    try:
        return ".jsonl", run_shard(model, config, archive, work, alive.touch)
    except UsageError as exc:
        return ".error", one_line(exc)
    except Exception as exc:  # unforeseen: this shard fails, the server goes on
        return ".error", f"the shard broke the model server: {type(exc).__name__}: {one_line(exc)}"


def _serve_one(model, config: dict, jobs: Path, archive: Path, alive: Path) -> None:
    """Run and answer one shard; the answer comes last, when the shard's files are gone."""
    name, work = archive.stem, jobs / "work" / archive.stem
    answer = None
    try:
        suffix, text = _answer(model, config, archive, work, alive)
        if os.path.lexists(archive):  # else the controller gave up on it: nobody would read it
            answer = jobs / "outbox" / f"{name}{suffix}", text
    finally:
        shutil.rmtree(work, ignore_errors=True)
        try:
            archive.unlink(missing_ok=True)
        finally:
            if answer:
                _write_atomic(*answer)


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
    stuck: set[str] = set()  # shards that could not be removed: never run twice
    while True:
        now = time.monotonic()
        if now - touched >= ALIVE_EVERY_S:
            alive.touch()
            touched = now
        shards = sorted(s for s in _arrived(inbox) if s[1] not in stuck)
        if not shards:
            time.sleep(POLL_S if now - last_shard < IDLE_AFTER_S else IDLE_POLL_S)
            continue
        archive = shards[0][2]
        try:
            _serve_one(model, config, jobs, archive, alive)
        except Exception as exc:  # the answer or the clean-up failed: say so, serve on
            print(f"evc-infer: shard {archive.name}: {one_line(exc)}", file=sys.stderr, flush=True)
            if os.path.lexists(archive):
                stuck.add(archive.name)
        last_shard = time.monotonic()
