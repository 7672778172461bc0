"""YAML with positions: the data, plus the line and column of every key and list item.

Anchors, aliases and merge keys (``<<``) work as in any YAML; a value that comes
from an anchor is located where the anchor defines it. Duplicate keys, which
PyYAML would silently collapse, are errors.

The file comes from someone the controller does not trust, so reading it is
bounded before anything walks the data: its size, its encoding, and the document
as if every alias were expanded (PyYAML shares an aliased node, so a 500-byte
"billion laughs" only explodes later, in whatever walks it). Nesting is bounded
too, so that no walker of the data can run out of stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[int, int]  # 1-based line, column
Key = tuple[Any, ...]  # path into the data: mapping keys and list indices

MAX_BYTES = 1 << 20  # a file read from a user (run-config, device list)
MAX_NODES = 100_000  # values in a document, aliases expanded
MAX_TEXT = 4 << 20  # characters of its scalars, aliases expanded
MAX_DEPTH = 64  # nesting of a document, aliases expanded
_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # line breaks as YAML counts them
_KEY_TAGS = {  # keys the data can use as they are (JSON, paths in messages)
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "merge", "value")
}


@dataclass
class YamlProblem(Exception):
    line: int
    column: int
    message: str


@dataclass
class Located:
    data: Any
    positions: dict[Key, Loc]

    def where(self, path: Key) -> Loc:
        """Position of ``path``, else of its nearest ancestor that has one."""
        path = tuple(path)
        while path and path not in self.positions:
            path = path[:-1]
        return self.positions.get(path, (1, 1))


def _loc(mark) -> Loc:
    return (mark.line + 1, mark.column + 1)


def _tag(node) -> str:
    return node.tag.removeprefix("tag:yaml.org,2002:")


def _end(text: str) -> Loc:
    """Line and column just past ``text``."""
    line = 1 + sum(1 for _ in _BREAK.finditer(text))
    return line, len(text) - max(text.rfind(c) for c in "\n\r\x85\u2028\u2029")


def read_text(path: Path) -> str:
    """A user's file as text, refused (YamlProblem) before any parser sees it when it is
    over MAX_BYTES, not UTF-8 (a BOM is fine and dropped), or holds a character YAML
    forbids (NUL and other control characters): a CSV parser would take those as data."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlProblem(1, 1, f"cannot read the file: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        size = max(len(data), path.stat().st_size)
        raise YamlProblem(
            1, 1, f"the file is {size:,} bytes; at most {MAX_BYTES:,} (1 MiB) are read"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = _end(data[: exc.start].decode("utf-8-sig"))
        raise YamlProblem(
            line,
            col,
            f"byte 0x{data[exc.start]:02X} is not UTF-8 ({exc.reason}); save the file as UTF-8",
        ) from None
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad:
        line, col = _end(text[: bad.start()])
        raise YamlProblem(
            line,
            col,
            f"character U+{ord(bad.group()):04X} is not allowed (no control characters "
            "but tab and line breaks); remove it",
        )
    return text


class _Loader(yaml.SafeLoader):
    """SafeLoader that measures the document as if its aliases were expanded while it is
    composed (an alias costs what its anchor holds, in one step), and refuses it past
    MAX_NODES, MAX_TEXT or MAX_DEPTH, or when an alias is used inside its own anchor."""

    def __init__(self, text: str):
        super().__init__(text)
        self.nodes = self.chars = 0  # so far, in document order, aliases expanded
        self.tallest = [0]  # per open node (and the document): height of its tallest child
        self.sizes: dict[str, tuple[int, int, int]] = {}  # anchor: nodes, chars, height

    def compose_node(self, parent, index):
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)  # an undefined alias is refused here
            alias = f"alias *{event.anchor}"
            if event.anchor not in self.sizes:
                raise YamlProblem(*_loc(mark), f"{alias} is used inside its own anchor (a loop)")
            nodes, chars, height = self.sizes[event.anchor]
            self._nest(height, mark, f"{alias} holds {height} levels; nested here it is")
            self._count(
                nodes,
                chars,
                mark,
                f"{alias} repeats {nodes:,} value{'s' * (nodes > 1)} ({chars:,} characters)",
            )
            return node
        self._nest(1, mark, "nested")
        nodes, chars = self.nodes, self.chars
        self._count(1, 0, mark, "this value")
        self.tallest.append(0)
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.ScalarNode):
            self.chars += len(node.value)  # never over MAX_TEXT but through an alias
        height = 1 + self.tallest.pop()
        self.tallest[-1] = max(self.tallest[-1], height)
        if event.anchor is not None:
            self.sizes[event.anchor] = (self.nodes - nodes, self.chars - chars, height)
        return node

    def _nest(self, height: int, mark, what: str) -> None:
        self.tallest[-1] = max(self.tallest[-1], height)
        if len(self.tallest) - 1 + height > MAX_DEPTH:
            raise YamlProblem(*_loc(mark), f"{what} more than {MAX_DEPTH} levels deep, the limit")

    def _count(self, nodes: int, chars: int, mark, what: str) -> None:
        self.nodes += nodes
        self.chars += chars
        for total, limit, unit in (
            (self.nodes, MAX_NODES, "values"),
            (self.chars, MAX_TEXT, "characters"),
        ):
            if total > limit:
                raise YamlProblem(
                    *_loc(mark),
                    f"{what}: with aliases expanded the document would be more than "
                    f"{limit:,} {unit}, the limit",
                )

    def construct_object(self, node, deep=False):
        """A value its tag cannot hold (``2023-13-45`` as a date) is a located problem;
        PyYAML raises a bare ValueError (or worse) for some."""
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # any failure here is the input's
            what = f"{node.value!r:.60}" if isinstance(node, yaml.ScalarNode) else "this value"
            raise yaml.constructor.ConstructorError(
                None, None, f"{what} is not a valid {_tag(node)}: {exc}", node.start_mark
            ) from None


def _check_keys(node, seen_ids: set[int]) -> None:
    """Refuse a mapping that repeats a key (merge keys may repeat what they merge), and
    keys that are not a string, number, boolean or null."""
    if id(node) in seen_ids:
        return
    seen_ids.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: dict[Any, Any] = {}
        for key, value in node.value:
            if key.tag not in _KEY_TAGS:
                raise YamlProblem(
                    *_loc(key.start_mark),
                    f"a key must be a string, a number, true/false or null, not a {_tag(key)}",
                )
            if key.tag != "tag:yaml.org,2002:merge":
                if key.value in keys:
                    line, col = _loc(key.start_mark)
                    first = keys[key.value].start_mark.line + 1
                    raise YamlProblem(
                        line, col, f"key {key.value!r} appears twice (first on line {first})"
                    )
                keys[key.value] = key
            _check_keys(value, seen_ids)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_keys(item, seen_ids)


def _positions(loader: _Loader, node, path: Key, out: dict[Key, Loc]) -> None:
    """Every key's and item's position; follows aliases (bounded by the loader's limits)."""
    if isinstance(node, yaml.MappingNode):  # flattened: merged keys come first, own keys win
        for key, value in node.value:
            child = path + (loader.construct_object(key),)  # ``1:`` is an int key
            out[child] = _loc(key.start_mark)
            _positions(loader, value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = _loc(item.start_mark)
            _positions(loader, item, path + (i,), out)


def load(path: Path) -> Located:
    """Parse ``path``; YamlProblem (with a position) for a file that is too big, not
    UTF-8 text, not valid YAML, too large or deep once aliases expand, or repeats a key."""
    text = read_text(path)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Located(None, {})
        _check_keys(node, set())
        data = loader.construct_document(node)  # flattens merge keys in the node tree
        positions: dict[Key, Loc] = {(): _loc(node.start_mark)}
        _positions(loader, node, (), positions)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = _loc(mark) if mark else (1, 1)
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        if "${" in (text.splitlines()[line - 1 : line] or [""])[0]:
            what += " (inside { } or [ ], quote a value that uses ${...})"
        raise YamlProblem(line, col, f"not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(1, 1, f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return Located(data, positions)
