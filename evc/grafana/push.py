"""`evc grafana push`: create or update the datasource, folder and dashboards in a
running Grafana through its HTTP API (grafana-client), by uid, idempotently.

Each item is read first; one that already matches is reported unchanged and not
written, so a second push changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from evc.config import Workspace
from evc.errors import EVCError, UsageError
from evc.grafana.dashboards import all_dashboards
from evc.grafana.provision import FOLDER_TITLE, FOLDER_UID, datasource

TIMEOUT_S = 15


@dataclass
class PushItem:
    kind: str  # datasource | folder | dashboard
    uid: str
    title: str
    action: str  # created | updated | unchanged | failed
    error: str | None = None


@dataclass
class PushResult:
    url: str
    grafana_version: str | None
    items: list[PushItem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(i.action != "failed" for i in self.items)

    def to_dict(self) -> dict:
        return {"url": self.url, "grafana_version": self.grafana_version, "ok": self.ok,
                "items": [asdict(i) for i in self.items]}  # fmt: skip


class _Missing(Exception):
    """Grafana answered 404."""


def _call(url: str, fn, *args):
    """Run one API call; 404 -> _Missing, a rejected token or no answer -> EVCError."""
    import niquests
    from grafana_client.client import GrafanaException

    try:
        return fn(*args)
    except GrafanaException as exc:
        message = _message(exc)
        if exc.status_code == 404:
            raise _Missing(message) from None
        if exc.status_code in (401, 403):
            what = "rejected the token" if exc.status_code == 401 else "refused the token"
            raise EVCError(
                f"Grafana at {url} {what} ({exc.status_code}: {message}). Use a service "
                "account token with the Admin role (it creates datasources, folders and "
                "dashboards), in GRAFANA_TOKEN or the variable given by --token-env."
            ) from None
        if exc.status_code == 0:  # a timeout or a broken connection
            raise EVCError(f"Grafana at {url} does not answer: {message}") from None
        raise
    except niquests.exceptions.RequestException as exc:
        raise EVCError(f"Grafana at {url} does not answer ({_reason(exc)}).") from None
    except ValueError:  # an answer that is not JSON: not a Grafana API
        raise EVCError(f"{url} answered, but not with Grafana's JSON API.") from None


def _reason(exc) -> str:
    """The OS's words for a failed connection, not the HTTP library's nesting of them."""
    text = str(exc)
    if found := re.search(r"\[Errno -?\d+\] ([^'\")]+)", text):
        return found.group(1).strip()
    if found := re.search(r"Failed to resolve '([^']+)'", text):
        return f"cannot resolve {found.group(1)}"
    return text[:300]


def _message(exc) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and response.get("message"):
        return str(response["message"])
    return str(exc)


def _check_url(url: str) -> None:
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(f"--url {url!r}: expected http(s)://HOST[:PORT][/PATH] of a Grafana.")


def _subset_equal(want, have) -> bool:
    """Every key we set has the same value in what Grafana holds (it adds its own keys)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            _subset_equal(v, have.get(k)) for k, v in want.items()
        )
    return want == have


def _item(kind: str, uid: str, title: str, write) -> PushItem:
    """Run ``write`` (returns the action); a Grafana error fails this item only."""
    from grafana_client.client import GrafanaException

    try:
        return PushItem(kind, uid, title, write())
    except (GrafanaException, _Missing) as exc:
        return PushItem(kind, uid, title, "failed", _message(exc))


def push(ws: Workspace, url: str, token: str, db_path: str | None = None) -> PushResult:
    """Create or update the EVC datasource, folder and dashboards in the Grafana at ``url``.

    ``db_path`` is the database file as that Grafana sees it (default: this
    workspace's, for a Grafana on this machine).
    """
    from grafana_client import GrafanaApi

    _check_url(url)
    if not token:
        raise UsageError("No Grafana token given; set GRAFANA_TOKEN or answer the prompt.")
    api = GrafanaApi.from_url(url, credential=token, timeout=TIMEOUT_S)
    build_info = _call(url, api.health.check)  # GET /api/frontend/settings: checks the token
    if not isinstance(build_info, dict) or "version" not in build_info:
        raise EVCError(f"{url} answered, but not as a Grafana would (no buildInfo.version).")
    result = PushResult(url, build_info["version"])
    ds = datasource(db_path or str((ws.root / "db" / "evc.db").resolve()))

    def write_datasource() -> str:
        try:
            have = _call(url, api.datasource.get_datasource_by_uid, ds["uid"])
        except _Missing:
            _call(url, api.datasource.create_datasource, ds)
            return "created"
        if _subset_equal(ds, have):
            return "unchanged"
        _call(url, api.datasource.update_datasource_by_uid, ds["uid"], ds)
        return "updated"

    def write_folder() -> str:
        try:
            have = _call(url, api.folder.get_folder, FOLDER_UID)
        except _Missing:
            _call(url, api.folder.create_folder, FOLDER_TITLE, FOLDER_UID)
            return "created"
        if have.get("title") == FOLDER_TITLE:
            return "unchanged"
        _call(url, lambda: api.folder.update_folder(FOLDER_UID, title=FOLDER_TITLE,
                                                      overwrite=True))  # fmt: skip
        return "updated"

    def write_dashboard(dash: dict) -> str:
        try:
            have = _call(url, api.dashboard.get_dashboard, dash["uid"])
        except _Missing:
            have = None
        if (
            have is not None
            and have.get("meta", {}).get("folderUid") == FOLDER_UID
            and (_subset_equal(dash, have.get("dashboard")))
        ):
            return "unchanged"
        payload = {"dashboard": dash, "folderUid": FOLDER_UID, "overwrite": True,
                   "message": "evc grafana push"}  # fmt: skip
        _call(url, api.dashboard.update_dashboard, payload)
        return "created" if have is None else "updated"

    result.items.append(_item("datasource", ds["uid"], ds["name"], write_datasource))
    result.items.append(_item("folder", FOLDER_UID, FOLDER_TITLE, write_folder))
    for dash in all_dashboards():
        result.items.append(
            _item("dashboard", dash["uid"], dash["title"], lambda d=dash: write_dashboard(d))
        )
    return result
