"""Typer commands built from a capability's options (:mod:`evc.options`).

``@command(app, DeployOptions)`` over ``def deploy(options, json)`` gives
``evc model deploy REF TARGET [--serial ...] [--json]``: every field becomes an argument
or a flag with its help and default, the values are validated by the options model (a
bad one is a usage error naming the flag, exit 2), and the function gets the options
object plus its own CLI-only parameters (``json``, ``password_stdin``, ...).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import typer
from pydantic import ValidationError

from evc.errors import UsageError
from evc.options import Options, cli_meta, flag_of

JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def _plain(annotation: Any) -> Any:
    """The type Typer parses (pydantic keeps validators in the field, not the type)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def _parameter(options: type[Options], name: str) -> inspect.Parameter:
    field = options.model_fields[name]
    meta = cli_meta(field)
    if field.is_required():
        default = ...
    else:
        default = None if field.default_factory is not None else field.default
    annotation = _plain(field.annotation)
    if meta.get("argument"):
        info = typer.Argument(default, help=field.description, show_default=default is not ...)
    else:
        decls = []
        if meta.get("flag") or annotation is not bool:
            decls.append(flag_of(options, name))
        if meta.get("short"):
            decls.append("-" + meta["short"])
        info = typer.Option(default, *decls, help=field.description)
    kind = inspect.Parameter.KEYWORD_ONLY
    return inspect.Parameter(name, kind, default=info, annotation=annotation)


def build(options: type[Options], values: dict[str, Any]) -> Options:
    """The options object from parsed CLI values; a bad value is a UsageError naming its flag."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return options.model_validate(given)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            name = str(e["loc"][0]) if e["loc"] else ""
            where = flag_of(options, name) if name in options.model_fields else "options"
            problems.append(f"{where}: {e['msg'].removeprefix('Value error, ').rstrip('.')}")
        raise UsageError("; ".join(problems) + ".") from None


def command(app: typer.Typer, options: type[Options], name: str | None = None):
    """Register ``func(options, **cli_only)`` as a command whose parameters are the fields
    of ``options`` followed by ``func``'s own keyword parameters."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        own = list(inspect.signature(func).parameters.values())[1:]
        hints = typing.get_type_hints(func)
        fields = [_parameter(options, n) for n in options.model_fields]
        extra = [
            p.replace(
                kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)
            )
            for p in own
        ]
        own_names = {p.name for p in own}

        def wrapper(**values: Any) -> Any:
            cli_only = {k: values.pop(k) for k in list(values) if k in own_names}
            return func(build(options, values), **cli_only)

        params = fields + extra
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.__name__ = func.__name__
        wrapper.__doc__ = func.__doc__ or options.__doc__
        app.command(name)(wrapper)
        return func

    return register
