"""Secrets out of what EVC records (the audit log, run-config runs, host messages).

The rule, in one place:

- A *secret name* is an option, variable or key one of whose words (split at ``-``,
  ``_``, ``.`` and camelCase) is password, passwd, passphrase, pwd, pass, token,
  secret, key, apikey, credential(s), unless its last word is file, path, dir, env or
  stdin (it says where a secret is, not what it is: ``--key-file``, ``--token-env``).
  Its value is stored as ``***``: ``--token X``, ``--token=X``, ``--var api_token=X``
  (any ``NAME=VALUE`` word), ``{"grafanaToken": X}``.
- URL user-info is stored as ``***`` wherever it appears: ``https://***@host/``.
- A value a run-config took from the environment (``${env.NAME}``) is stored as that
  reference: a whole value equal to it, and any text that embeds it when it is at least
  ``EMBEDDED_MIN`` characters long (shorter ones would match by accident).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

MASK = "***"
EMBEDDED_MIN = 6
_SECRET_WORDS = {"password", "passwd", "passphrase", "pwd", "pass", "token", "secret",
                 "key", "apikey", "credential", "credentials"}  # fmt: skip
_PLACE_WORDS = {"file", "path", "dir", "env", "stdin"}
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]+@")
_ASSIGN = re.compile(r"^([A-Za-z_][\w.-]*)=(.+)$", re.S)


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]


def secret_name(name: str) -> bool:
    """Whether a value under this name is a secret (see the module's rule)."""
    words = _words(name)
    return bool(words) and words[-1] not in _PLACE_WORDS and not _SECRET_WORDS.isdisjoint(words)


def text(value: str, env: Mapping[str, str] | None = None) -> str:
    """``value`` with URL user-info masked and environment values shown as references."""
    for secret, ref in sorted((env or {}).items(), key=lambda kv: -len(kv[0])):
        if value == secret:
            return ref
        if len(secret) >= EMBEDDED_MIN:
            value = value.replace(secret, ref)
    return _USERINFO.sub(rf"\1{MASK}@", value)


def data(value: Any, env: Mapping[str, str] | None = None) -> Any:
    """JSON-like ``value`` as it may be stored: secret-named keys' values masked, every
    string through :func:`text`."""
    if isinstance(value, Mapping):
        return {
            k: MASK if secret_name(str(k)) and _has_value(v) else data(v, env)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [data(v, env) for v in value]
    if isinstance(value, str):
        return text(value, env)
    return value


def _has_value(value: Any) -> bool:
    return value is not None and not isinstance(value, bool) and value != ""


def args(argv: list[str], flags: Collection[str] = ()) -> list[str]:
    """A command line as it may be stored; ``flags`` are the options that take no value
    (so the word after ``--password-stdin`` or ``--copy-key`` is not taken for theirs)."""
    out: list[str] = []
    masked_next = False
    for word in argv:
        if masked_next:
            out.append(MASK)
            masked_next = False
        elif word.startswith("--"):
            name, eq, value = word.partition("=")
            if eq:
                out.append(f"{name}={MASK if secret_name(name) else _word(value)}")
            else:
                masked_next = secret_name(name) and name not in flags
                out.append(word)
        else:
            out.append(_word(word))
    return out


def _word(word: str) -> str:
    """One argument: the value of a secret-named ``NAME=VALUE`` masked, URL user-info too."""
    match = _ASSIGN.match(word)
    if match and secret_name(match.group(1)):
        return f"{match.group(1)}={MASK}"
    return text(word)
