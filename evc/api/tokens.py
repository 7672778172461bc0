"""API tokens: random 256-bit bearer secrets, shown once and stored only as a hash.

A token is ``evc_`` and 43 URL-safe characters (32 random bytes). The database keeps
its SHA-256, which is enough for a secret with 256 bits of entropy (no salt or slow
hash is needed: nothing can be guessed); a presented token is hashed and its row found
by that hash, then compared in constant time. Roles are ordered: a viewer reads, an
operator also runs jobs, deploys and run-configs, an admin also manages devices,
tokens and the registry.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Annotated

from pydantic import AfterValidator

from evc import db as evcdb
from evc.config import Workspace
from evc.errors import UsageError
from evc.names import TokenName
from evc.options import Options, arg, opt

ROLES = ("viewer", "operator", "admin")
PREFIX = "evc_"
MAX_TOKEN_CHARS = 128  # a presented value past this is not a token: no hashing of megabytes


def _role(value: str) -> str:
    if value not in ROLES:
        raise ValueError(f"{value!r} is not a role: choose one of {', '.join(ROLES)}")
    return value


def _duration(value: str) -> str:
    from evc.logs import parse_duration

    try:
        parse_duration(value, "--expires")
    except UsageError as exc:
        raise ValueError(str(exc).removeprefix("--expires ").rstrip(".")) from None
    return value


Role = Annotated[str, AfterValidator(_role)]


class CreateOptions(Options):
    """Create an API token for `evc serve`: printed once, stored only as a hash."""

    name: TokenName = arg(help="Who or what uses it (names it in the audit log).")
    role: Role = opt(
        "viewer",
        help="viewer (reads) | operator (also jobs, deploys, run-configs) | admin (also "
        "devices, tokens, registry).",
    )
    expires: Annotated[str, AfterValidator(_duration)] | None = opt(
        None, help="Lifetime, e.g. 30d, 12h, 2w (default: until revoked)."
    )


@dataclass
class Token:
    name: str
    role: str
    created: float
    expires: float | None
    revoked: float | None
    last_used: float | None

    @property
    def state(self) -> str:
        if self.revoked:
            return "revoked"
        if self.expires is not None and self.expires <= time.time():
            return "expired"
        return "active"

    def allows(self, role: str) -> bool:
        return rank(self.role) >= rank(role)

    def to_dict(self) -> dict:
        return {**asdict(self), "state": self.state}


def rank(role: str) -> int:
    return ROLES.index(role)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token(row: dict) -> Token:
    return Token(**{k: row[k] for k in Token.__dataclass_fields__})


def create(ws: Workspace, options: CreateOptions) -> tuple[str, Token]:
    """(the token, its record). A name in use is refused unless its token is revoked
    (then the new token takes the name over)."""
    from evc.logs import parse_duration

    secret = PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    expires = now + parse_duration(options.expires) if options.expires else None
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        old = next(db.query("SELECT revoked FROM api_tokens WHERE name = ?", [options.name]), None)
        if old is not None and not old["revoked"]:
            raise UsageError(
                f"A token named {options.name!r} exists; revoke it first "
                f"(`evc token revoke {options.name}`) or choose another name."
            )
        db.execute("DELETE FROM api_tokens WHERE name = ?", [options.name])
        row = {"name": options.name, "role": options.role, "hash": digest(secret),
               "created": now, "expires": expires, "revoked": None, "last_used": None}  # fmt: skip
        db["api_tokens"].insert(row)
    return secret, _token(row)


def list_tokens(ws: Workspace) -> list[Token]:
    rows = evcdb.workspace_db(ws).query("SELECT * FROM api_tokens ORDER BY name")
    return [_token(r) for r in rows]


def revoke(ws: Workspace, name: str) -> Token:
    """Revoke a token: refused (401) from the next request on."""
    db = evcdb.workspace_db(ws)
    with evcdb.transaction(db):
        db.execute(
            "UPDATE api_tokens SET revoked = ? WHERE name = ? AND revoked IS NULL",
            [time.time(), name],
        )
        row = next(db.query("SELECT * FROM api_tokens WHERE name = ?", [name]), None)
    if row is None:
        known = ", ".join(t.name for t in list_tokens(ws)) or "none (evc token create)"
        raise UsageError(f"No token named {name!r}. Tokens: {known}.")
    return _token(row)


def verify(db, presented: str) -> Token | None:
    """The active token ``presented`` is, or None (unknown, revoked, expired)."""
    if not presented.startswith(PREFIX) or len(presented) > MAX_TOKEN_CHARS:
        return None
    wanted = digest(presented)
    row = next(db.query("SELECT * FROM api_tokens WHERE hash = ?", [wanted]), None)
    if row is None or not hmac.compare_digest(row["hash"], wanted):
        return None
    token = _token(row)
    return token if token.state == "active" else None


def touch(db, name: str, now: float) -> None:
    """Record that ``name`` was used (callers do it at most once a minute per token)."""
    with evcdb.transaction(db):
        db.execute("UPDATE api_tokens SET last_used = ? WHERE name = ?", [now, name])
