"""Located problems: every error in a user's file reported at once, as FILE:LINE:COL,
with a "did you mean" for near misses (run-configs, evc.yaml, device lists)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from evc import yamlpos
from evc.errors import UsageError

MAX_PROBLEMS = 100  # then checking stops: enough to fix, and bounded in time and memory


@dataclass
class Problems:
    path: Path
    located: yamlpos.Located | None = None
    items: list[tuple[int, int, str, str]] = field(default_factory=list)
    kind: str = "run-config"  # what the file should have been

    def add(self, where: tuple, message: str) -> None:
        line, col = self.located.where(where) if self.located else (1, 1)
        self.items.append((line, col, _dotted(where), message))
        if len(self.items) >= MAX_PROBLEMS:
            raise self.error()

    def stop(self, where: tuple, message: str) -> NoReturn:
        """Add a problem and stop checking: past a limit, going on would cost what the
        limit saves."""
        self.add(where, message)
        raise self.error()

    def raise_if_any(self) -> None:
        if self.items:
            raise self.error()

    def error(self) -> UsageError:
        lines = [
            f"{self.path}:{line}:{col}: " + (f"{where}: " if where else "") + message
            for line, col, where, message in sorted(self.items, key=lambda i: i[:2])
        ]
        count = f"{len(lines)} problem{'s' if len(lines) > 1 else ''}"
        if len(lines) >= MAX_PROBLEMS:
            count += ", checking stopped there"
        return UsageError(
            f"{self.path} is not a valid {self.kind} ({count}; nothing was run):\n"
            + "\n".join(lines)
        )


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def suggest(word: str, allowed: list[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss, else empty."""
    close = difflib.get_close_matches(str(word), allowed, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def pydantic_problems(
    problems: Problems,
    exc: ValidationError,
    prefix: tuple,
    allowed: Callable,
    what: str = "key",
    owner: str = "",
) -> None:
    """Each pydantic error as a located problem; ``allowed(loc)`` lists the keys there."""
    for e in exc.errors():
        loc = tuple(e["loc"])
        where = prefix + loc
        if e["type"] == "extra_forbidden":
            keys = allowed(loc[:-1])
            problems.add(
                where,
                f"unknown {what} {loc[-1]!r}{owner}{suggest(loc[-1], keys)}. "
                f"Allowed: {', '.join(keys)}.",
            )
        elif e["type"] == "missing":
            problems.add(where[:-1], f"missing required {what} {loc[-1]!r}{owner}.")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            hint = ""
            if e["type"] == "string_type" and isinstance(e["input"], int | float):
                hint = "; put it in quotes to keep it as written (unquoted, 1.10 is 1.1)"
            got = repr(e["input"])[:60]
            shown = "" if got in msg else f" (got {got})"  # our own messages quote the value
            problems.add(where, f"{msg}{shown}{hint}.")
