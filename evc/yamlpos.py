"""YAML with positions: the data, plus the line and column of every key and list item.

Anchors, aliases and merge keys (``<<``) work as in any YAML; a value that comes
from an anchor is located where the anchor defines it. Duplicate keys, which
PyYAML would silently collapse, are errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Loc = tuple[int, int]  # 1-based line, column
Key = tuple[Any, ...]  # path into the data: mapping keys and list indices


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


def _duplicates(node, seen_ids: set[int]) -> None:
    """Refuse a mapping that repeats a key (merge keys may repeat what they merge)."""
    if id(node) in seen_ids:
        return
    seen_ids.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: dict[Any, Any] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in keys:
                    line, col = _loc(key.start_mark)
                    first = keys[key.value].start_mark.line + 1
                    raise YamlProblem(
                        line, col, f"key {key.value!r} appears twice (first on line {first})"
                    )
                keys[key.value] = key
            _duplicates(value, seen_ids)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _duplicates(item, seen_ids)


def _positions(node, path: Key, out: dict[Key, Loc], depth: int = 0) -> None:
    if depth > 50:  # an alias loop cannot happen in YAML, but deep nesting can
        return
    if isinstance(node, yaml.MappingNode):  # flattened: merged keys come first, own keys win
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                child = path + (_key(key),)
                out[child] = _loc(key.start_mark)
                _positions(value, child, out, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = _loc(item.start_mark)
            _positions(item, path + (i,), out, depth + 1)


def _key(node) -> Any:
    """A key as the constructor makes it (``1:`` is an int key, ``a:`` a string)."""
    return node.value if node.tag == "tag:yaml.org,2002:str" else yaml.safe_load(node.value)


def load(path: Path) -> Located:
    """Parse ``path``; YamlProblem (with a position) for bad YAML or a repeated key."""
    text = path.read_text(errors="replace")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Located(None, {})
        _duplicates(node, set())
        data = loader.construct_document(node)  # flattens merge keys in the node tree
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
    positions: dict[Key, Loc] = {(): _loc(node.start_mark)}
    _positions(node, (), positions)
    return Located(data, positions)
