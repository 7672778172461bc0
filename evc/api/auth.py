"""Who is calling: a bearer token in the ``Authorization`` header, checked on every
request against the database (so a revoked token is refused from its next request).

No token -> 401 (unless the server allows anonymous reading and the route only reads);
a token that is unknown, revoked or expired -> 401, even where anonymous reading is
allowed; a token whose role is below the route's -> 403. Tokens never travel in URLs,
and nothing here logs or stores one. Cross-site request forgery does not apply: a
browser attaches no bearer token on its own (the console keeps it in session storage
and sets the header itself), unlike a cookie.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from evc import db as evcdb
from evc.api import tokens

TOUCH_EVERY_S = 60.0  # last_used is written at most this often per token

_bearer = HTTPBearer(
    auto_error=False,
    description="A token from `evc token create NAME --role viewer|operator|admin`.",
)
_touched: dict[str, float] = {}
_touched_lock = threading.Lock()


@dataclass(frozen=True)
class Caller:
    name: str
    role: str
    anonymous: bool = False

    @property
    def who(self) -> str:
        """How the audit log and the actions table name the caller."""
        return "anonymous" if self.anonymous else f"token:{self.name}"


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": 'Bearer realm="evc"'})


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    """The caller of ``request``, or 401."""
    settings = request.app.state.settings
    if credentials is None:
        if request.headers.get("authorization"):
            raise _unauthorized("The Authorization header must be `Bearer TOKEN`.")
        if settings.allow_anonymous_read:
            return Caller("anonymous", "viewer", anonymous=True)
        raise _unauthorized("A token is needed: `Authorization: Bearer TOKEN`.")
    db = evcdb.workspace_db(request.app.state.ws)
    token = tokens.verify(db, credentials.credentials)
    if token is None:
        raise _unauthorized("The token is unknown, revoked or expired.")
    now = time.time()
    with _touched_lock:
        due = now - _touched.get(token.name, 0.0) >= TOUCH_EVERY_S
        if due:
            _touched[token.name] = now
    if due:
        tokens.touch(db, token.name, now)
    return Caller(token.name, token.role)


def require(role: str):
    """A dependency that returns the caller if its role is ``role`` or above."""

    def dependency(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> Caller:
        caller = authenticate(request, credentials)
        request.state.caller = caller  # for the audit log
        if tokens.rank(caller.role) < tokens.rank(role):
            raise HTTPException(
                403, f"This needs the {role} role; {caller.who} has the {caller.role} role."
            )
        return caller

    dependency.__name__ = f"require_{role}"
    return dependency


VIEWER = Depends(require("viewer"))
OPERATOR = Depends(require("operator"))
ADMIN = Depends(require("admin"))
