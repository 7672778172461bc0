"""How long work tells what it is doing, without the library printing anything.

Core functions take a ``progress`` and report through it: ``log`` for a line worth
keeping (a build started, a wheelhouse downloaded), ``status`` for a live one-line
state that replaces the previous one (hosts done, items done), and ``detail`` for
the chatter behind a step (each line of a build log), which only a verbose caller
shows. The default, :data:`SILENT`, drops everything; the CLI passes one that draws
on the terminal (:mod:`evc.cli.progress`), and a server can pass one that streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    """Says nothing; subclasses show or forward what they are told."""

    def log(self, message: str) -> None:
        """A line worth keeping."""

    def detail(self, message: str) -> None:
        """A line of detail (build output): shown only when asked for."""

    def status(self, text: str) -> None:
        """The current state of the innermost task, replacing the previous one."""

    @contextmanager
    def task(self, title: str) -> Iterator[Progress]:
        """A span of work whose state is shown while it runs (nested spans stack)."""
        yield self


SILENT = Progress()
