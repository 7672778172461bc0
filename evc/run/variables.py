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

VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REF_RE = re.compile(r"\$\{([^{}]*)\}")
_ESCAPE = "\x00"  # stands for a literal "${" (written "$${") during substitution


def parse_vars(items: list[str]) -> dict[str, Any]:
    """``--var NAME=VALUE`` options; VALUE is read as a YAML scalar (3 is a number)."""
    import yaml

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not VAR_RE.match(name):
            raise UsageError(
                f"--var {item!r}: expected NAME=VALUE with NAME made of letters, digits and "
                "'_' (not starting with a digit), e.g. --var version=1.1."
            )
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        out[name] = parsed if isinstance(parsed, str | int | float | bool) else value
    return out


class Vars:
    """Resolves ``${name}`` and ``${env.NAME}``; variables may use other variables."""

    def __init__(self, raw: dict[str, Any], problems: Problems):
        self.raw, self.problems = raw, problems
        self.done: dict[str, Any] = {}
        self.busy: list[str] = []
        self.env: dict[str, str] = {}  # value taken from the environment -> its ${env.NAME}

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
            defined = ", ".join(self.raw) or "none"
            self.problems.add(
                where,
                f"${{{name}}}: undefined variable{suggest(name, list(self.raw))}."
                f" Defined in vars: {defined}.",
            )
            return ""
        if name in self.busy:
            cycle = " -> ".join([*self.busy[self.busy.index(name) :], name])
            self.problems.add(("vars", name), f"variables refer to each other in a loop: {cycle}.")
            return ""
        self.busy.append(name)
        self.done[name] = self.sub(self.raw[name], ("vars", name))
        self.busy.pop()
        return self.done[name]

    def sub(self, value: Any, where: tuple) -> Any:
        if isinstance(value, dict):
            return {k: self.sub(v, (*where, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.sub(v, (*where, i)) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        text = value.replace("$${", _ESCAPE)
        whole = _REF_RE.fullmatch(text)
        if whole:
            return self.get(whole.group(1).strip(), where)
        out = _REF_RE.sub(lambda m: _text(self.get(m.group(1).strip(), where)), text)
        return out.replace(_ESCAPE, "${")


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
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
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
            f"{ast.unparse(node)!r} is not allowed; use variables, constants, "
            "comparisons, and/or/not"
        )

    return bool(ev(tree))
