"""Run-configs: a versioned YAML scenario, checked whole before anything touches the fleet.

A file has ``version: 1``, optional ``vars`` and ``devices`` (enrolled first) and
``steps``; each step names one capability (``do: model.deploy``) and takes the
options of its CLI command under ``with:`` (see evc.steps). ``${var}`` and
``${env.NAME}`` are replaced in every value; a value that is only a reference keeps
the variable's type. Top-level keys starting with ``x-`` are ignored (a home for
YAML anchors). Every problem is reported with file, line and column.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import operator
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evc import steps as catalogue
from evc import yamlpos
from evc.config import Workspace
from evc.devices import Device
from evc.errors import UsageError

VERSION = 1
ENROL = "devices"  # name and kind of the step that enrols the ``devices:`` list
_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REF_RE = re.compile(r"\$\{([^{}]*)\}")
_ESCAPE = "\x00"  # stands for a literal "${" (written "$${") during substitution


class ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    description: str | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    devices: list[Device] = Field(default_factory=list)
    steps: list[Any] = Field(min_length=1)


class StepFile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
    do: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    target: str | None = None
    when: bool | str = True
    continue_on_error: bool = False


@dataclass
class Step:
    index: int  # 1-based position in the file (0: the ``devices:`` enrolment)
    name: str
    kind: str
    options: dict[str, Any]  # validated, the target included when the kind takes one
    target: str | None
    run: bool  # what ``when`` said
    continue_on_error: bool = False
    hosts: list[str] | None = None  # the target's hosts; None when not resolved

    @property
    def what(self) -> str:
        if self.kind == ENROL:
            return "Register the devices of the devices: list (those not enrolled yet)."
        return catalogue.describe(self.kind)

    @property
    def command(self) -> str:
        if self.kind == ENROL:
            return "evc device import (the devices: list)"
        options = {k: v for k, v in self.options.items() if k != catalogue.TARGET}
        return catalogue.command_line(self.kind, options, self.target)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "do": self.kind,
            "target": self.target,
            "hosts": self.hosts,
            "run": self.run,
            "continue_on_error": self.continue_on_error,
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in self.options.items()},
            "what": self.what,
            "command": self.command,
        }


@dataclass
class Scenario:
    path: Path
    digest: str
    description: str | None
    vars: dict[str, Any]
    devices: list[Device]
    steps: list[Step]
    targets_checked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "sha256": self.digest,
            "description": self.description,
            "vars": self.vars,
            "targets_checked": self.targets_checked,
            "steps": [s.to_dict() for s in self.steps],
        }


# --------------------------------------------------------------------- problems


@dataclass
class _Problems:
    path: Path
    located: yamlpos.Located | None = None
    items: list[tuple[int, int, str, str]] = field(default_factory=list)

    def add(self, where: tuple, message: str) -> None:
        line, col = self.located.where(where) if self.located else (1, 1)
        self.items.append((line, col, _dotted(where), message))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = [
            f"{self.path}:{line}:{col}: " + (f"{where}: " if where else "") + message
            for line, col, where, message in sorted(self.items, key=lambda i: i[:2])
        ]
        count = f"{len(lines)} problem{'s' if len(lines) > 1 else ''}"
        raise UsageError(
            f"{self.path} is not a valid run-config ({count}; nothing was run):\n"
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


def _pydantic(
    problems: _Problems,
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
            problems.add(where, f"{msg} (got {repr(e['input'])[:60]}){hint}.")


# --------------------------------------------------------------------- variables


def parse_vars(items: list[str]) -> dict[str, Any]:
    """``--var NAME=VALUE`` options; VALUE is read as a YAML scalar (3 is a number)."""
    import yaml

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _VAR_RE.match(name):
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


class _Vars:
    """Resolves ``${name}`` and ``${env.NAME}``; variables may use other variables."""

    def __init__(self, raw: dict[str, Any], problems: _Problems):
        self.raw, self.problems = raw, problems
        self.done: dict[str, Any] = {}
        self.busy: list[str] = []

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
            return os.environ.get(name[4:], "")
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


# --------------------------------------------------------------------- loading


def load(
    path: Path, overrides: dict[str, Any] | None = None, ws: Workspace | None = None
) -> Scenario:
    """Read and check a whole run-config; a UsageError lists every problem, located.

    With a workspace, each step's target is resolved to hosts (the enrolled devices
    plus those the file enrols); nothing is written.
    """
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise UsageError(
            f"{path}: {what}; expected a run-config YAML file, e.g. run_cfg/demo.yaml."
        )
    problems = _Problems(path)
    try:
        located = yamlpos.load(path)
    except yamlpos.YamlProblem as exc:
        problems.items.append((exc.line, exc.column, "", exc.message + "."))
        problems.raise_if_any()
    problems.located = located
    data = located.data
    if data is None:
        problems.add((), "the file is empty; expected a mapping with version: 1 and steps:.")
    elif not isinstance(data, dict):
        problems.add(
            (), f"expected a mapping with version: 1 and steps:, got a {type(data).__name__}."
        )
    problems.raise_if_any()
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    variables = _variables(data, overrides or {}, problems)
    resolver = _Vars(variables, problems)
    variables = resolver.resolve_all()
    body = {k: v if k == "vars" else resolver.sub(v, (k,)) for k, v in data.items()}
    top = list(ScenarioFile.model_fields)
    try:
        parsed = ScenarioFile.model_validate(body)
    except ValidationError as exc:  # report it, and still check the steps if they are a list
        _pydantic(problems, exc, (), lambda loc: _allowed_top(loc, top))
        raw_steps = body.get("steps")
        parsed = ScenarioFile.model_construct(
            version=VERSION, vars={}, devices=[], description=None,
            steps=raw_steps if isinstance(raw_steps, list) else [],
        )  # fmt: skip
    if parsed.version != VERSION:
        problems.add(
            ("version",),
            f"version {parsed.version} is not supported; this EVC reads version {VERSION}.",
        )
    plan = []
    if parsed.devices:
        plan.append(Step(0, ENROL, ENROL, {}, None, True))
    for i, raw in enumerate(parsed.steps):
        step = _step(i, raw, path.parent, variables, problems)
        if step is not None:
            plan.append(step)
    _unique_names(plan, problems)
    scenario = Scenario(
        path,
        hashlib.sha256(path.read_bytes()).hexdigest(),
        parsed.description,
        variables,
        parsed.devices,
        plan,
    )
    planned = _planned_devices(scenario, problems)
    if ws is not None and not problems.items:
        _resolve_targets(ws, scenario, planned, problems)
        scenario.targets_checked = True
    problems.raise_if_any()
    return scenario


def _allowed_top(loc: tuple, top: list[str]) -> list[str]:
    if loc and loc[0] == "devices":
        return list(Device.model_fields)
    return [*top, "x-..."]


def _variables(data: dict, overrides: dict[str, Any], problems: _Problems) -> dict[str, Any]:
    raw = data.get("vars") or {}
    if not isinstance(raw, dict):
        problems.add(("vars",), "vars must be a mapping of NAME: VALUE.")
        problems.raise_if_any()
    for name in raw:
        if not isinstance(name, str) or not _VAR_RE.match(name) or name == "env":
            problems.add(
                ("vars", name),
                f"variable name {name!r}: use letters, digits and '_', "
                "not starting with a digit (and not 'env').",
            )
    unknown = [n for n in overrides if n not in raw]
    if unknown:
        declared = ", ".join(raw) or "none"
        raise UsageError(
            f"--var {unknown[0]}: {problems.path} declares no such variable"
            f"{suggest(unknown[0], list(raw))}. Declared: {declared}."
        )
    return {**raw, **overrides}


def _step(i: int, raw: Any, base: Path, variables: dict, problems: _Problems) -> Step | None:
    where = ("steps", i)
    if not isinstance(raw, dict):
        problems.add(where, "a step must be a mapping with at least do: KIND.")
        return None
    fields = [f.alias or n for n, f in StepFile.model_fields.items()]
    try:
        spec = StepFile.model_validate(raw)
    except ValidationError as exc:
        _pydantic(problems, exc, where, lambda loc: fields)
        return None
    kinds = list(catalogue.COMMANDS)
    if spec.do not in kinds:
        problems.add(
            (*where, "do"),
            f"unknown step kind {spec.do!r}{suggest(spec.do, kinds)}. "
            f"Known kinds: {', '.join(kinds)}.",
        )
        return None
    model = catalogue.option_model(spec.do)
    keys = list(model.model_fields)
    if catalogue.TARGET in spec.with_:
        problems.add(
            (*where, "with", catalogue.TARGET),
            "the target is a key of the step itself (target: PATTERN), not of with:.",
        )
        return None
    try:
        options = model.model_validate(spec.with_).model_dump()
    except ValidationError as exc:
        _pydantic(problems, exc, (*where, "with"), lambda loc: keys, "option", f" of {spec.do}")
        return None
    ok = _paths(spec.do, options, base, (*where, "with"), problems)
    target = _target(spec, where, problems)
    try:
        run = evaluate_when(spec.when, variables)
    except ValueError as exc:
        problems.add((*where, "when"), f"{exc}.")
        return None
    if not ok or target is False:
        return None
    if target is not None:
        options[catalogue.TARGET] = target
    return Step(i + 1, spec.name or spec.do, spec.do, options, target, run, spec.continue_on_error)


def _target(spec: StepFile, where: tuple, problems: _Problems) -> str | None | bool:
    """The step's target (its command's default when not given); False on a problem."""
    param = catalogue.target_param(spec.do)
    if param is None:
        if spec.target is not None:
            problems.add(
                (*where, "target"), f"{spec.do} runs on the controller and takes no target."
            )
            return False
        return None
    if spec.target is not None:
        return spec.target
    if param.required:
        problems.add(
            where,
            f"{spec.do} needs target: an Ansible pattern (all, a group, a "
            "host, or 'group:&other').",
        )
        return False
    return param.default


def _paths(kind: str, options: dict, base: Path, where: tuple, problems: _Problems) -> bool:
    """Relative input paths are looked up next to the run-config first, then in the
    current folder; each must exist (weights may name a model config that ultralytics
    ships). Output paths (steps.OUTPUT_PATHS) are left as given."""
    from evc.images import builtin_config

    ok = True
    for key, value in options.items():
        if not isinstance(value, Path) or key in catalogue.OUTPUT_PATHS:
            continue
        near = base / value
        if not value.is_absolute() and near.exists():
            options[key] = near
        elif not value.exists() and not (key == "weights" and builtin_config(value)):
            problems.add(
                (*where, key), f"{value} does not exist (looked in {base} and in {Path.cwd()})."
            )
            ok = False
    return ok


def _unique_names(plan: list[Step], problems: _Problems) -> None:
    seen: dict[str, Step] = {}
    for step in plan:
        if step.name in seen:
            first = seen[step.name]
            problems.add(
                ("steps", step.index - 1),
                f"two steps are named {step.name!r} "
                f"(steps[{first.index - 1}] too); give each its own name.",
            )
        seen[step.name] = step


def _resolve_targets(
    ws: Workspace, scenario: Scenario, planned: list[Device], problems: _Problems
) -> None:
    """Each run step's target as hosts, over the enrolled devices plus those to enrol."""
    import tempfile

    from evc import devices, inventory
    from evc.ansible import resolve_hosts

    rows = []
    db_file = ws.root / "db" / "evc.db"
    if db_file.exists():
        from evc import db

        rows = [db.device_from_row(r) for r in db.workspace_db(ws)["devices"].rows]
    known = {r["name"] for r in rows}
    for device in planned:
        if device.name not in known:
            rows.append(device.model_dump())
            known.add(device.name)
    with tempfile.TemporaryDirectory(prefix="evc-plan-") as tmp:
        hosts_file = inventory.write(Path(tmp) / "hosts.yml", devices.inventory_hosts(rows))
        for step in scenario.steps:
            if step.target is None or not step.run:
                continue
            try:
                step.hosts = resolve_hosts(hosts_file, step.target)
            except UsageError as exc:
                where = ("steps", step.index - 1, "target")
                problems.add(where, str(exc).replace(str(hosts_file), "the inventory"))


def _planned_devices(scenario: Scenario, problems: _Problems) -> list[Device]:
    from evc import devices

    out = list(scenario.devices)
    for step in scenario.steps:
        if not step.run:
            continue
        where = ("steps", step.index - 1, "with")
        o = step.options
        try:
            if step.kind == "device.add":
                out.append(devices.from_options(**{k: o[k] for k in o if k != "target"}))
            elif step.kind == "device.import":
                out.extend(devices.load_file(o["file"]))
        except UsageError as exc:
            problems.add(where, str(exc))
    return out


# --------------------------------------------------------------------- selection


def select(
    scenario: Scenario, start: str | None = None, only: list[str] | None = None
) -> list[Step]:
    """The steps to run: all, from ``start`` on, or those named in ``only``."""
    names = [s.name for s in scenario.steps]
    if start and only:
        raise UsageError("--from and --only do not go together; use one.")
    for option, name in [("--from", start)] + [("--only", n) for n in only or []]:
        if name is not None and name not in names:
            raise UsageError(
                f"{option} {name!r}: {scenario.path} has no such step"
                f"{suggest(name, names)}. Steps: {', '.join(names)}."
            )
    if start:
        return scenario.steps[names.index(start) :]
    if only:
        return [s for s in scenario.steps if s.name in only]
    return list(scenario.steps)
