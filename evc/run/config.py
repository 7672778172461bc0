"""Run-configs: a versioned YAML scenario, checked whole before anything touches the fleet.

A file has ``version: 1``, optional ``vars`` and ``devices`` (enrolled first) and
``steps``; each step names one capability (``do: model.deploy``) and takes the
options of its CLI command under ``with:`` (see evc.run.capabilities). ``${var}`` and
``${env.NAME}`` are replaced in every value; a value that is only a reference keeps
the variable's type. Top-level keys starting with ``x-`` are ignored (a home for
YAML anchors). Every problem is reported with file, line and column.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evc import db, devices, inventory, names, yamlpos
from evc.config import Workspace
from evc.devices import Device
from evc.errors import UsageError
from evc.model.runtimes import builtin_config
from evc.options import TARGET, Options
from evc.problems import Problems, pydantic_problems, suggest
from evc.run import capabilities
from evc.run.variables import VAR_RE, Vars, evaluate_when, typed
from evc.targets import resolve_hosts

VERSION = 1
ENROL = "devices"  # name and kind of the step that enrols the ``devices:`` list


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
    # shown (plan, run table, record) when ``when`` skips the step: why, and how to run it
    skip_note: str | None = Field(None, max_length=1000)
    continue_on_error: bool = False


@dataclass
class Step:
    index: int  # 1-based position in the file (0: the ``devices:`` enrolment)
    name: str
    kind: str
    options: Options | None  # validated, the target included when the kind takes one
    target: str | None
    run: bool  # what ``when`` said
    continue_on_error: bool = False
    hosts: list[str] | None = None  # the target's hosts; None when not resolved
    skip_note: str | None = None  # why ``when`` skips it and how to run it

    @property
    def skipped_because(self) -> str | None:
        """The note of a step that ``when`` skips (None for a step that runs)."""
        return None if self.run else self.skip_note or "skipped: its when: is false"

    @property
    def what(self) -> str:
        if self.kind == ENROL:
            return "Register the devices of the devices: list (those not enrolled yet)."
        return capabilities.CAPABILITIES[self.kind].what

    @property
    def command(self) -> str:
        if self.kind == ENROL:
            return "evc device import (the devices: list)"
        return capabilities.CAPABILITIES[self.kind].command_line(self.options)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "do": self.kind,
            "target": self.target,
            "hosts": self.hosts,
            "run": self.run,
            "continue_on_error": self.continue_on_error,
            "skip_note": self.skip_note,
            "options": self.options.model_dump(mode="json") if self.options else {},
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
    # each value taken from the environment -> its ${env.NAME}, for what is stored (evc.redact)
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "sha256": self.digest,
            "description": self.description,
            "vars": self.vars,
            "targets_checked": self.targets_checked,
            "steps": [s.to_dict() for s in self.steps],
        }


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
    problems = Problems(path)
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
    resolver = Vars(variables, problems)
    variables = resolver.resolve_all()
    body = {k: v if k == "vars" else resolver.sub(v, (k,)) for k, v in data.items()}
    top = list(ScenarioFile.model_fields)
    try:
        parsed = ScenarioFile.model_validate(body)
    except ValidationError as exc:  # report it, and still check the steps if they are a list
        pydantic_problems(problems, exc, (), lambda loc: _allowed_top(loc, top))
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
        env=resolver.env,
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


def _variables(data: dict, overrides: dict[str, Any], problems: Problems) -> dict[str, Any]:
    raw = data.get("vars") or {}
    if not isinstance(raw, dict):
        problems.add(("vars",), "vars must be a mapping of NAME: VALUE.")
        problems.raise_if_any()
    for name in raw:
        if not isinstance(name, str) or not VAR_RE.match(name) or name == "env":
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
    return {**raw, **{n: typed(n, str(v), raw[n]) for n, v in overrides.items()}}


def _step(i: int, raw: Any, base: Path, variables: dict, problems: Problems) -> Step | None:
    where = ("steps", i)
    if not isinstance(raw, dict):
        problems.add(where, "a step must be a mapping with at least do: KIND.")
        return None
    fields = [f.alias or n for n, f in StepFile.model_fields.items()]
    try:
        spec = StepFile.model_validate(raw)
    except ValidationError as exc:
        pydantic_problems(problems, exc, where, lambda loc: fields)
        return None
    kinds = list(capabilities.CAPABILITIES)
    if spec.do not in kinds:
        problems.add(
            (*where, "do"),
            f"unknown step kind {spec.do!r}{suggest(spec.do, kinds)}. "
            f"Known kinds: {', '.join(kinds)}.",
        )
        return None
    model = capabilities.CAPABILITIES[spec.do].options
    keys = [k for k in model.model_fields if k != TARGET]
    if TARGET in spec.with_:
        problems.add(
            (*where, "with", TARGET),
            "the target is a key of the step itself (target: PATTERN), not of with:.",
        )
        return None
    target = _target(spec, where, problems)
    if target is False:
        return None
    try:
        options = model.model_validate({**spec.with_, **({TARGET: target} if target else {})})
    except ValidationError as exc:
        pydantic_problems(
            problems, exc, (*where, "with"), lambda loc: keys, "option", f" of {spec.do}"
        )
        return None
    options = _paths(spec.do, options, base, (*where, "with"), problems)
    try:
        run = evaluate_when(spec.when, variables)
    except ValueError as exc:
        problems.add((*where, "when"), f"{exc}.")
        return None
    if options is None:
        return None
    target = getattr(options, TARGET, None)
    return Step(
        i + 1, spec.name or spec.do, spec.do, options, target, run, spec.continue_on_error,
        skip_note=spec.skip_note,
    )  # fmt: skip


def _target(spec: StepFile, where: tuple, problems: Problems) -> str | None | bool:
    """The step's target as given (None: the command's default); False on a problem."""
    model = capabilities.CAPABILITIES[spec.do].options
    field = model.model_fields.get(TARGET)
    if field is None:
        if spec.target is not None:
            problems.add(
                (*where, "target"), f"{spec.do} runs on the controller and takes no target."
            )
            return False
        return None
    if spec.target is not None:
        try:
            return names.check_target(spec.target)
        except UsageError as exc:
            problems.add((*where, "target"), str(exc))
            return False
    if field.is_required():
        problems.add(
            where,
            f"{spec.do} needs target: an Ansible pattern (all, a group, a "
            "host, or 'group:&other').",
        )
        return False
    return None


def _paths(
    kind: str, options: Options, base: Path, where: tuple, problems: Problems
) -> Options | None:
    """Relative input paths are looked up next to the run-config first, then in the
    current folder; each must exist (weights may name a model config that ultralytics
    ships). Output paths are left as given. None when one is missing."""
    ok, found = True, {}
    outputs = capabilities.output_paths(kind)
    for key in type(options).model_fields:
        value = getattr(options, key)
        if not isinstance(value, Path) or key in outputs:
            continue
        near = base / value
        try:
            if not value.is_absolute() and near.exists():
                found[key] = near
            elif not value.exists() and not (key == "weights" and builtin_config(value)):
                problems.add(
                    (*where, key), f"{value} does not exist (looked in {base} and in {Path.cwd()})."
                )
                ok = False
        except OSError as exc:  # a name too long for the file system, say
            problems.add((*where, key), f"{str(value)[:80]}: not a usable path ({exc.strerror}).")
            ok = False
    return options.model_copy(update=found) if ok else None


def _unique_names(plan: list[Step], problems: Problems) -> None:
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
    ws: Workspace, scenario: Scenario, planned: list[Device], problems: Problems
) -> None:
    """Each run step's target as hosts, over the enrolled devices plus those to enrol."""
    import tempfile

    rows = []
    db_file = ws.root / "db" / "evc.db"
    if db_file.exists():
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


def _planned_devices(scenario: Scenario, problems: Problems) -> list[Device]:
    out = list(scenario.devices)
    for step in scenario.steps:
        if not step.run:
            continue
        where = ("steps", step.index - 1, "with")
        o = step.options
        try:
            if step.kind == "device.add":
                out.append(o.device())
            elif step.kind == "device.import":
                out.extend(devices.load_file(o.file))
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
