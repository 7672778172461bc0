"""The per-user cache shared by workspaces, and building a cached thing once per machine.

Two EVC processes that need the same image or wheelhouse at the same moment (two labs
starting, `make test`'s two lab shards, a build beside a `lab up`) would each build it:
on a cold machine that was the base, node and registry images twice over, minutes of
CPU. :func:`build_once` makes the second wait for the first and then find it built.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """Per-user cache shared by workspaces (EVC_CACHE_DIR, else ~/.cache/evc)."""
    base = (
        os.environ.get("EVC_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "evc"
    )
    return Path(base)


@contextmanager
def exclusive(name: str, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold a lock named ``name`` that this user's processes share (flock: released if
    the holder dies); a process that has to wait says whom it waits for through ``log``."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log(f"waiting for another EVC process that is building {name}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def build_once(
    name: str,
    built: Callable[[], object],
    build: Callable[[], None],
    log: Callable[[str], None] | None = None,
) -> bool:
    """``build()`` unless ``built()`` is true, under :func:`exclusive` lock ``name``;
    True when it was built now (False: it was there, or another process built it)."""
    if built():
        return False
    with exclusive(name, log):
        if built():  # the other process built it meanwhile
            return False
        build()
        return True
