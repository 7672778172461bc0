"""Progress on the terminal: a live status line on stderr while work runs, log lines
above it; nothing at all with ``--json`` (stdout is for the JSON)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.text import Text

from evc.console import err
from evc.progress import SILENT, Progress


class ConsoleProgress(Progress):
    """Log lines on stderr (``detail`` too when verbose), one live status line on a terminal."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self._titles: list[str] = []
        self._status = None

    def log(self, message: str) -> None:
        err.print(message, highlight=False, soft_wrap=True)

    def detail(self, message: str) -> None:
        if self.verbose:
            err.print(message, style="dim", highlight=False, soft_wrap=True)

    def status(self, text: str) -> None:
        if self._status is not None and self._titles:
            self._status.update(Text.assemble((self._titles[-1], "bold"), f" {text}"))

    @contextmanager
    def task(self, title: str) -> Iterator[Progress]:
        if not err.is_terminal:
            yield self
            return
        self._titles.append(title)
        if self._status is None:
            self._status = err.status(Text(title))
            self._status.start()
        else:
            self._status.update(Text(title))
        try:
            yield self
        finally:
            self._titles.pop()
            if not self._titles:
                self._status.stop()
                self._status = None
            else:
                self._status.update(Text(self._titles[-1]))


def progress(json: bool, verbose: bool = False) -> Progress:
    """What a command reports through: the terminal, or nothing under --json."""
    return SILENT if json else ConsoleProgress(verbose)
