"""Every name and limit EVC accepts, as a strict pattern with a message that says what
is expected.

Values from users, run-configs, the HTTP API and nodes reach Ansible (where a string is
a template unless it is marked unsafe), the registry, Docker and shell-free argument
lists on nodes. Each field that has a natural shape is validated here, once, and every
entry point (CLI flags, run-config ``with:``, API bodies) uses these types; free text
(label values, owners) is bounded here and marked unsafe on its way to Ansible
(:mod:`evc.ansible`).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

from evc.errors import UsageError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _pattern(regex: str, expected: str):
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value[:80]!r} is not {expected}")
        return value

    return check


MODEL_NAME = _pattern(
    r"[a-z0-9][a-z0-9._-]{0,63}",
    "a model name: lower-case letters, digits, '.', '_' or '-', starting with a letter or "
    "digit, at most 64 characters (e.g. faces)",
)
VERSION = _pattern(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
    "a version: letters, digits, '.', '_' or '-', at most 64 characters (e.g. 1.0)",
)
DEVICE_NAME = _pattern(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
    "a device name: letters, digits, '.', '_' or '-' (no spaces or shell characters), "
    "starting with a letter or digit, at most 63 characters",
)
GROUP = _pattern(
    r"[a-z][a-z0-9_]{0,62}", "a group name: lower-case letters, digits and '_' (Ansible groups)"
)
USER = _pattern(r"[a-z_][a-z0-9_-]{0,31}", "a POSIX user name (lower-case letters, digits, _ or -)")
LABEL_KEY = _pattern(
    r"[A-Za-z][A-Za-z0-9_.-]{0,62}", "a label key: letters, digits, '.', '_' or '-'"
)
MEMORY = _pattern(
    r"[1-9][0-9]{0,12}[bkmgBKMG]?",
    "a memory size: a whole number with an optional unit b, k, m or g (e.g. 512m, 2g)",
)
WORKSPACE_NAME = _pattern(
    r"[a-z][a-z0-9-]{0,30}",
    "a name of lower-case letters, digits and '-', starting with a letter, at most 31 "
    "characters (it names containers, networks and the inventory folder)",
)
TOKEN_NAME = _pattern(
    r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}",
    "a token name: letters, digits, '.', '_', '@' or '-', starting with a letter or digit, "
    "at most 64 characters (e.g. ci-deploy)",
)
JOB_ID = _pattern(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
    "a job id: letters, digits, '.', '_' or '-', at most 64 characters (e.g. 20261202-043500-ab12)",
)  # no glob characters: a job id goes into Redis ACL key patterns (evc.queue.acl)
SERIAL = _pattern(r"[1-9][0-9]{0,5}%?", "a batch size: a count like 2 or a percentage like 25%")


def _ref(value: str) -> str:
    name, sep, version = value.partition(":")
    if not sep:
        raise ValueError(f"{value[:80]!r} is not NAME:VERSION (e.g. faces:1.0)")
    MODEL_NAME(name)
    VERSION(version)
    return value


MODEL_REF = _ref


def _model_or_ref(value: str) -> str:
    return _ref(value) if ":" in value else MODEL_NAME(value)


def _target(value: str) -> str:
    """An Ansible host pattern: names, groups, ``:&``, ``:!``, wildcards, ``~regex``.

    Never a template or a file: no braces, no leading '@' (``--limit @FILE`` reads hosts
    from a file), no quotes or control characters.
    """
    if (
        not value
        or len(value) > 512
        or value.startswith("@")
        or _CONTROL.search(value)
        or any(c in value for c in "{}'\"\\")
    ):
        raise ValueError(
            f"{value[:80]!r} is not an Ansible host pattern: use a host name, a group, "
            "'all', or a pattern such as 'group:&other' or 'node*' (no braces, quotes or "
            "a leading '@')"
        )
    return value


ARCH_NAMES = ("amd64", "arm64")  # the arches EVC builds model images for


def _arches(value: str) -> str:
    """A comma-separated list of arches (``amd64,arm64``), each once."""
    parts = value.split(",")
    if not value or any(p not in ARCH_NAMES for p in parts) or len(set(parts)) != len(parts):
        raise ValueError(
            f"{value[:80]!r} is not a list of arches: {' or '.join(ARCH_NAMES)}, or both "
            "separated by a comma (amd64,arm64)"
        )
    return value


BUILD_PLACES = ("auto", "builder", "emulation")  # where `model build --on` builds a foreign arch


def _build_on(value: str) -> str:
    if value not in BUILD_PLACES:
        raise ValueError(f"{value[:80]!r} is not one of: {', '.join(BUILD_PLACES)}")
    return value


def _text(limit: int):
    def check(value: str) -> str:
        if len(value) > limit or _CONTROL.search(value):
            raise ValueError(
                f"{value[:40]!r}... is not plain text of at most {limit} characters "
                "(no control characters)"
            )
        return value

    return check


ModelName = Annotated[str, AfterValidator(MODEL_NAME)]
Version = Annotated[str, AfterValidator(VERSION)]
ModelRef = Annotated[str, AfterValidator(_ref)]
ModelOrRef = Annotated[str, AfterValidator(_model_or_ref)]
Target = Annotated[str, AfterValidator(_target)]
Memory = Annotated[str, AfterValidator(MEMORY)]
Serial = Annotated[str, AfterValidator(SERIAL)]
JobId = Annotated[str, AfterValidator(JOB_ID)]
TokenName = Annotated[str, AfterValidator(TOKEN_NAME)]
WorkspaceName = Annotated[str, AfterValidator(WORKSPACE_NAME)]
Arches = Annotated[str, AfterValidator(_arches)]
BuildOn = Annotated[str, AfterValidator(_build_on)]
Owner = Annotated[str, AfterValidator(_text(128))]
LabelValue = Annotated[str, AfterValidator(_text(256))]


def check(validator, value: str, what: str) -> str:
    """``validator(value)`` for callers outside pydantic: a UsageError naming ``what``."""
    try:
        return validator(value)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}.") from None


def check_target(value: str) -> str:
    return check(_target, value, "target")
