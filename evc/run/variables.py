"""Run-config variables: ``${name}`` and ``${env.NAME}`` in values, ``--var`` overrides,
and ``when:`` expressions over variables (a tiny, safe subset of Python)."""

from __future__ import annotations

import ast
import operator
import os
import re
from typing import Any

from evc.errors import UsageError
from evc.problems import Problems, suggest
from evc.yamlpos import MAX_DEPTH

VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REF_RE = re.compile(r"\$\{([^{}]*)\}")
_ESCAPE = "\x00"  # stands for a literal "${" (written "$${") during substitution
MAX_VALUE = 64 << 10  # characters in one value after substitution
MAX_TOTAL = 4 << 20  # characters that substitution makes in one file, all values together
MAX_WHEN = 1000  # characters in a when: expression (its parser and evaluator recurse)


def parse_vars(items: list[str]) -> dict[str, str]:
    """``--var NAME=VALUE`` options, the values as typed (see :func:`typed`)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not VAR_RE.match(name):
            raise UsageError(
                f"--var {item!r}: expected NAME=VALUE with NAME made of letters, digits and "
                "'_' (not starting with a digit), e.g. --var version=1.1."
            )
        out[name] = value
    return out


def typed(name: str, value: str, declared: Any) -> Any:
    """A ``--var`` value in the type its variable is declared with in the file: a declared
    string stays the text typed (``--var version=1.1`` is "1.1", not 1.1), a number or a
    boolean must read as one; an undeclared type (null) takes the YAML scalar."""
    import yaml

    if isinstance(declared, str):
        return value
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    if declared is None:
        return parsed if isinstance(parsed, str | int | float | bool) else value
    kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(
        type(declared), type(declared).__name__
    )
    wanted = float if isinstance(declared, float) else type(declared)
    ok = isinstance(parsed, wanted) and not (isinstance(parsed, bool) and wanted is not bool)
    if wanted is float and isinstance(parsed, int) and not isinstance(parsed, bool):
        return float(parsed)
    if not ok:
        raise UsageError(
            f"--var {name}={value!r}: {name} is declared as {declared!r}, so expected {kind}."
        )
    return parsed


class Vars:
    """Resolves ``${name}`` and ``${env.NAME}``; variables may use other variables.

    Each variable is resolved once, but its value can be used many times and a value
    can use a variable many times, so a short file could grow without end
    (``a: ${b}${b}``, ``b: ${c}${c}``, ...). A value is bounded (MAX_VALUE), so is
    all that substitution produces (MAX_TOTAL), and so is nesting (yamlpos.MAX_DEPTH):
    past a bound, loading stops with a located problem naming the variable.
    """

    def __init__(self, raw: dict[str, Any], problems: Problems):
        self.raw, self.problems = raw, problems
        self.done: dict[str, Any] = {}
        self.busy: list[str] = []
        self.env: dict[str, str] = {}  # value taken from the environment -> its ${env.NAME}
        self.level = 0  # lists, mappings and variables being resolved, one inside another
        self.total = 0  # characters substituted so far
        self.measured: dict[int, tuple[int, int]] = {}  # id(container): its _measure

    def resolve_all(self) -> dict[str, Any]:
        for name in self.raw:
            self.get(name, ("vars", name))
        return self.done

    def get(self, name: str, where: tuple) -> Any:
        if name.startswith("env."):
            if name[4:] not in os.environ:
                self.problems.add(
                    where, f"${{{name}}}: environment variable {name[4:]!r} is not set."
                )
            value = os.environ.get(name[4:], "")
            if value:  # stored runs show the reference, not the value (evc.redact)
                self.env[value] = f"${{{name}}}"
            return value
        if name in self.done:
            return self.done[name]
        if name not in self.raw:
            names = list(self.raw)
            defined = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if names[20:] else "")
            self.problems.add(
                where,
                f"${{{name}}}: undefined variable{suggest(name, names)}."
                f" Defined in vars: {defined or 'none'}.",
            )
            return ""
        if name in self.busy:
            cycle = " -> ".join([*self.busy[self.busy.index(name) :], name])
            self.problems.add(("vars", name), f"variables refer to each other in a loop: {cycle}.")
            return ""
        self.busy.append(name)
        self._deeper(where)
        self.done[name] = self.sub(self.raw[name], ("vars", name))
        self.level -= 1
        self.busy.pop()
        return self.done[name]

    def sub(self, value: Any, where: tuple) -> Any:
        if isinstance(value, dict | list):
            self._deeper(where)
            if isinstance(value, dict):
                out = {k: self.sub(v, (*where, k)) for k, v in value.items()}
            else:
                out = [self.sub(v, (*where, i)) for i, v in enumerate(value)]
            self.level -= 1
            return out
        if not isinstance(value, str) or "${" not in value:
            return value
        text = value.replace("$${", _ESCAPE)
        whole = _REF_RE.fullmatch(text)
        if whole:
            name = whole.group(1).strip()
            found = self.get(name, where)
            height, size = self._measure(found)
            if len(where) + height > MAX_DEPTH:
                self.problems.stop(
                    where, f"${{{name}}} nests more than {MAX_DEPTH} levels deep here."
                )
            self._add(size, name, where)
            return found
        pieces, length, end, name = [], 0, 0, None
        for ref in _REF_RE.finditer(text):
            name = ref.group(1).strip()
            pieces += [text[end : ref.start()], _text(self.get(name, where))]
            end = ref.end()
            length += len(pieces[-2]) + len(pieces[-1])
            self._fits(length, name, where)  # before the join: pieces can be long
        out = "".join([*pieces, text[end:]]).replace(_ESCAPE, "${")
        if name is not None:
            self._fits(len(out), name, where)
            self._add(len(out), name, where)
        return out

    def _fits(self, length: int, name: str, where: tuple) -> None:
        if length > MAX_VALUE:
            self.problems.stop(
                where,
                f"${{{name}}} makes this value longer than {MAX_VALUE:,} characters, "
                "the limit for a value after substituting variables.",
            )

    def _deeper(self, where: tuple) -> None:
        """One level more of recursion: bounded, so that no input exhausts the stack."""
        self.level += 1
        if self.level > MAX_DEPTH:
            busy = self.busy if len(self.busy) < 7 else [*self.busy[:2], "...", *self.busy[-3:]]
            self.problems.stop(
                where,
                f"variables that use variables nest more than {MAX_DEPTH} levels deep here, "
                f"counting the lists and mappings in their values ({' -> '.join(busy)}).",
            )

    def _add(self, size: int, name: str, where: tuple) -> None:
        self.total += size
        if self.total > MAX_TOTAL:
            self.problems.stop(
                where,
                f"${{{name}}}: substituting variables makes more than {MAX_TOTAL:,} "
                "characters in all, the limit (is a big variable used very often?).",
            )

    def _measure(self, value: Any) -> tuple[int, int]:
        """(nesting, characters) of a resolved value; shared parts are measured once."""
        if not isinstance(value, dict | list):
            return 0, len(_text(value))
        if id(value) not in self.measured:
            items = [*value, *value.values()] if isinstance(value, dict) else value
            parts = [self._measure(v) for v in items]
            self.measured[id(value)] = (
                1 + max((h for h, _ in parts), default=0),
                1 + sum(n for _, n in parts),
            )
        return self.measured[id(value)]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# --------------------------------------------------------------------- when

_CMP = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_WORDS = {"true": True, "false": False, "True": True, "False": False, "null": None}


def evaluate_when(expr: bool | str, variables: dict[str, Any]) -> bool:
    """``true``, or an expression over vars: ``not skip``, ``profile == 'lab' and n > 2``."""
    if isinstance(expr, bool):
        return expr
    source = expr.strip()
    if len(source) > MAX_WHEN:
        raise ValueError(f"the expression is longer than {MAX_WHEN:,} characters, the limit")
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError:
        raise ValueError(
            f"{expr!r} is not an expression; use true/false, a variable name, "
            "comparisons (== != < <= > >= in), and/or/not"
        ) from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in variables:
                return variables[node.id]
            if node.id in _WORDS:
                return _WORDS[node.id]
            raise ValueError(f"{node.id!r} is not a variable{suggest(node.id, list(variables))}")
        if isinstance(node, ast.BoolOp):
            values = [bool(ev(v)) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not ev(node.operand)
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = ev(right_node)
                try:
                    if not _CMP[type(op)](left, right):
                        return False
                except (KeyError, TypeError):
                    raise ValueError(f"cannot compare {left!r} and {right!r}") from None
                left = right
            return True
        if isinstance(node, ast.List | ast.Tuple):
            return [ev(e) for e in node.elts]
        raise ValueError(
            f"{ast.get_source_segment(source, node)!r} is not allowed; use variables, constants, "
            "comparisons, and/or/not"
        )

    return bool(ev(tree))
