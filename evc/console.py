"""Terminal output shared by the CLI: consoles, styled text, tables, JSON."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.text import Text

# Markup and emoji codes off: what EVC prints (file names, node messages, labels, error
# messages) is shown as written, so ``photo[/]1.jpg`` or ``[link=...]`` is text, never a
# style or a markup error. What is meant to be styled is a rich Text: styled(), state().
out = Console(markup=False, emoji=False)
err = Console(stderr=True, markup=False, emoji=False)
for _console in (out, err):
    # Piped into a file or a CI log: rich would assume 80 columns and squeeze tables.
    if not _console.is_terminal and "COLUMNS" not in os.environ:
        _console.width = 200

STATE_STYLE = {
    "ok": "green",
    "changed": "yellow",
    "failed": "red",
    "unreachable": "magenta",
    "skipped": "dim",
}

Cell = str | Text  # a str is plain text; a Text carries its own style


def styled(text: Any, style: str) -> Text:
    """``text`` (taken literally) in ``style``."""
    return Text(str(text), style=style)


def state(value: str, styles: dict[str, str] = STATE_STYLE) -> Text:
    """A state word in its colour (ok green, failed red, ...)."""
    return styled(value, styles.get(value, ""))


def line(*parts: Cell, console: Console = out, **kwargs: Any) -> None:
    """One line from plain strings and styled Text parts."""
    console.print(Text.assemble(*parts), highlight=False, **kwargs)


def print_json(data: Any) -> None:
    """Indented JSON; a list has one item per line (json's C encoder, not the Python
    one that ``indent`` needs: 10,000 devices print in a tenth of the time)."""
    if isinstance(data, list) and data:
        items = ",\n".join("  " + json.dumps(item, default=str) for item in data)
        sys.stdout.write("[\n" + items + "\n]\n")
    else:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


RICH_TABLE_MAX_ROWS = 200


def print_table(title: str, columns: list[str], rows: list[list[Cell]]) -> None:
    """A rich table, or plain aligned text past RICH_TABLE_MAX_ROWS (rich lays out
    every cell: 10,000 rows take ~10 s; plain text takes milliseconds). A str cell is
    shown as written; styled cells are Text (styled(), state())."""
    if len(rows) <= RICH_TABLE_MAX_ROWS:
        from rich.table import Table

        table = Table(title=Text(title))
        for col in columns:
            table.add_column(Text(col), overflow="fold")  # wrap, never cut, in narrow output
        for row in rows:
            table.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in row))
        out.print(table)
        return
    plain = [[c.plain if isinstance(c, Text) else c for c in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in plain)) for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in plain]
    sys.stdout.write("\n".join(line.rstrip() for line in lines) + "\n")


_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], top: float = 100.0) -> str:
    """One character per value on a 0..``top`` scale; a gap (space) where a value is None."""
    return "".join(
        " " if v is None else _BARS[min(len(_BARS) - 1, max(0, int(v / top * len(_BARS))))]
        for v in values
    )


def ago(at: float | None, now: float | None = None) -> str:
    """'12s ago', '5m ago', '3h ago', '2d ago'; '-' for never."""
    if at is None:
        return "-"
    secs = max(0, int((time.time() if now is None else now) - at))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit} ago"
    return f"{secs}s ago"


def human_bytes(n: float | None, suffix: str = "") -> str:
    """1536 -> '1.5 KiB'; '-' for None."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}{suffix}" if unit == "B" else f"{n:.1f} {unit}{suffix}"
        n /= 1024
    return "-"  # unreachable
