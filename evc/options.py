"""Options of a capability: one declaration for every way in.

Each fleet capability (``model.deploy``, ``cert.push``, ...) declares its options once,
as a pydantic model next to the function that carries it out. The CLI builds its flags
from it (:mod:`evc.cli.options`), a run-config step's ``with:`` is validated by it
(:mod:`evc.run.capabilities`), and an HTTP API can take it as a request body. So a
field's type, default, help and validation (:mod:`evc.names`) cannot drift apart
between them.

``arg`` declares a positional CLI argument, ``opt`` a ``--flag``; a field named
``target`` is the command's target (an Ansible pattern), which a run-config step
gives as its own ``target:`` key rather than under ``with:``.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evc.errors import UsageError

TARGET = "target"
TARGET_HELP = "Ansible pattern of the nodes: a host, a group, 'all', or 'group:&other'."
_CLI = "x-evc-cli"  # json_schema_extra key: how the CLI shows a field


def arg(default: Any = ..., *, help: str) -> Any:
    """A positional argument (required unless it has a default)."""
    return Field(default, description=help, json_schema_extra={_CLI: {"argument": True}})


def opt(
    default: Any = None,
    *,
    help: str,
    flag: str | None = None,
    short: str | None = None,
    output: bool = False,
    ge: float | None = None,
    le: float | None = None,
) -> Any:
    """A ``--flag`` (named after the field unless ``flag`` says otherwise); ``output``
    marks a path the command writes to (it need not exist beforehand)."""
    cli = {"flag": flag, "short": short, "output": output}
    return Field(default, description=help, ge=ge, le=le, json_schema_extra={_CLI: cli})


def cli_meta(field) -> dict[str, Any]:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return dict(extra.get(_CLI) or {})


def flag_of(options: type[Options], name: str) -> str:
    """How the CLI spells field ``name``: ``--max-fail-percent``, or ``TARGET`` for an argument."""
    meta = cli_meta(options.model_fields[name])
    if meta.get("argument"):
        return name.upper()
    return "--" + (meta.get("flag") or name.replace("_", "-"))


def _is_str(annotation: Any) -> bool:
    """``str``, ``Annotated[str, ...]`` or an optional one."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_is_str(a) for a in typing.get_args(annotation))
    return annotation is str


class Options(BaseModel):
    """Base of every capability's options: unknown keys are errors; frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _whole_numbers_as_text(cls, data: Any) -> Any:
        """``serial: 2`` in YAML or JSON means "2"; a float stays an error, because
        ``version: 1.10`` would silently become "1.1"."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            value = out.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and _is_str(field.annotation):
                out[name] = str(value)
        return out

    @classmethod
    def of(cls, **values: Any) -> Options:
        """The options from keyword values; a bad one is a UsageError naming the field."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'options'}: "
                + e["msg"].removeprefix("Value error, ").rstrip(".")
                for e in exc.errors()
            )
            raise UsageError(f"{problems}.") from None

    @classmethod
    def takes_target(cls) -> bool:
        return TARGET in cls.model_fields

    def without_target(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if k != TARGET}
