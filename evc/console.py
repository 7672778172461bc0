"""Terminal output shared by the CLI and core functions: consoles, progress, tables, JSON."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any

from rich.console import Console

out = Console()
err = Console(stderr=True)

STATE_STYLE = {
    "ok": "green",
    "changed": "yellow",
    "failed": "red",
    "unreachable": "magenta",
    "skipped": "dim",
}


class _Line:
    def __init__(self, status):
        self._status = status

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)


@contextmanager
def progress_line(title: str, enabled: bool = True):
    """A live one-line status on stderr while long work runs (silent when not a terminal)."""
    if not enabled or not err.is_terminal:
        yield _Line(None)
        return
    with err.status(title) as status:
        yield _Line(status)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
