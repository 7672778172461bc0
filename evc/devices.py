"""Devices: validation, the devices table, host-key pinning, facts, liveness, inventory.

The inventory is generated from the database on every change, so the database is
the one source of truth; the lab registers its nodes through the same code.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from evc import db as evcdb
from evc import inventory, names, pull_credentials, yamlpos
from evc.ansible import run_playbook
from evc.config import Workspace
from evc.errors import EVCError, Result, UsageError
from evc.keys import check_host_key, controller_key, copy_key, pin_host, scan_host_keys
from evc.model import deployments
from evc.options import TARGET_HELP, Options, arg, opt
from evc.progress import SILENT, Progress
from evc.queue import server as queue

HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
FACT_FIELDS = (
    "arch", "os", "kernel", "cpu_count", "mem_bytes", "disk_bytes", "accelerator",
    "docker_version",
)  # fmt: skip
RESERVED_GROUPS = {"all", "ungrouped", "builders", "workers"}
ROLES = ("builder", "worker")


def _host(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        pass
    if re.fullmatch(r"[0-9.]+", v) or not HOSTNAME_RE.match(v):
        raise ValueError(f"{v[:80]!r} is not an IPv4/IPv6 address or a DNS host name")
    return v.lower()


def _group(v: str) -> str:
    names.GROUP(v)
    if v in RESERVED_GROUPS:
        raise ValueError(f"group {v!r} is reserved ({', '.join(sorted(RESERVED_GROUPS))})")
    return v


def _role(v: str) -> str:
    if v not in ROLES:
        raise ValueError(f"{v!r} is not a role: expected 'builder' or 'worker'")
    return v


Host = Annotated[str, AfterValidator(_host)]
Group = Annotated[str, AfterValidator(_group)]
Role = Annotated[str, AfterValidator(_role)]
DeviceName = Annotated[str, AfterValidator(names.DEVICE_NAME)]
User = Annotated[str, AfterValidator(names.USER)]
LabelKey = Annotated[str, AfterValidator(names.LABEL_KEY)]


class Device(BaseModel):
    """A device as the user describes it (facts are gathered, not given)."""

    model_config = ConfigDict(extra="forbid")

    name: DeviceName
    host: Host
    port: int = Field(22, ge=1, le=65535)
    user: User = "root"
    role: Role = "worker"
    groups: list[Group] = Field(default_factory=list)
    labels: dict[LabelKey, names.LabelValue] = Field(default_factory=dict)
    lat: float | None = Field(None, ge=-90, le=90)
    lon: float | None = Field(None, ge=-180, le=180)

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        return sorted(set(v))


def parse_device(data: dict[str, Any], where: str = "") -> Device:
    """Validate ``data`` into a Device; a UsageError names each bad field."""
    try:
        return Device.model_validate(data)  # not Device(**data): a key may be no string
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'device'}: " + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise UsageError(f"{where}invalid device: {problems}.") from None


class AddOptions(Options):
    """Register a device: pin its SSH host key, gather its facts, add it to the inventory."""

    name: DeviceName = arg(help="Device name (letters, digits, . _ -).")
    host: Host = opt(..., help="IP address or DNS name.")
    port: int = opt(22, help="SSH port.", ge=1, le=65535)
    user: User = opt("root", help="SSH user.")
    group: list[Group] = opt([], help="Group (repeatable).", short="g")
    role: Role = opt("worker", help="builder or worker.")
    label: list[str] = opt([], help="KEY=VALUE (repeatable).", short="l")
    lat: float | None = opt(None, help="Latitude, for the fleet map.", ge=-90, le=90)
    lon: float | None = opt(None, help="Longitude, for the fleet map.", ge=-180, le=180)

    @field_validator("label")
    @classmethod
    def _labels_parse(cls, v: list[str]) -> list[str]:
        try:
            parse_labels(v)
        except UsageError as exc:
            raise ValueError(str(exc).removeprefix("--label ").rstrip(".")) from None
        return v

    def device(self) -> Device:
        return parse_device(
            dict(name=self.name, host=self.host, port=self.port, user=self.user, role=self.role,
                 groups=list(self.group), labels=parse_labels(self.label), lat=self.lat,
                 lon=self.lon)
        )  # fmt: skip


class ImportOptions(Options):
    """Register many devices at once; their facts are gathered in one parallel run."""

    file: Path = arg(help="YAML list of devices, or CSV with a header row.")


class RemoveOptions(Options):
    """Remove a device from the database and the inventory; its registry pull credential
    is deleted (the registry refuses it at once)."""

    name: DeviceName = arg(help="Device name.")


class FactsOptions(Options):
    """Gather facts again (arch, OS, CPUs, memory, disk, Docker, accelerator)."""

    target: names.Target = arg("all", help=TARGET_HELP)


class PingOptions(Options):
    """Reach every targeted device in one parallel run; update last_seen and status."""

    target: names.Target = arg("all", help=TARGET_HELP)


def parse_labels(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE.")
        out[key] = value
    return out


def load_file(path: Path) -> list[Device]:
    """Devices from YAML (a list, or a mapping with ``devices:``) or CSV (a header row).

    CSV columns: name, host, port, user, role, groups (separated by ';'), labels
    (``k=v;k=v``), lat, lon. Any bad row is an error naming the file and row. The file
    is read within the limits of evc.yamlpos (size, UTF-8, aliases, nesting): it may
    come from anyone.
    """
    if not path.is_file():
        raise UsageError(f"{path}: no such file; expected a device list in YAML or CSV.")
    try:
        if path.suffix.lower() == ".csv":
            records = _csv_records(path, yamlpos.read_text(path))
        else:
            records = _yaml_records(path, yamlpos.load(path))
    except yamlpos.YamlProblem as exc:
        raise UsageError(f"{path}:{exc.line}:{exc.column}: {exc.message}.") from None
    devices = []
    for where, rec in records:
        if not isinstance(rec, dict):
            raise UsageError(f"{where}: expected a mapping with name and host.")
        name = rec.get("name", "?")
        devices.append(parse_device(rec, where=f"{where} (name {name!r}): "))
    return devices


def _csv_records(path: Path, text: str) -> list[tuple[str, Any]]:
    """(where, record) of each row; every row has the header's number of fields."""
    import csv

    reader = csv.reader(text.splitlines())
    records = []
    try:
        header = [h.strip() for h in next(reader, [])]
        if not {"name", "host"} <= set(header):
            raise UsageError(f"{path}: the CSV header must name at least 'name' and 'host'.")
        twice = sorted({h for h in header if h and header.count(h) > 1})
        if twice:
            raise UsageError(f"{path}: row 1: the header names {twice[0]!r} twice.")
        for row in reader:
            where = f"{path}: row {reader.line_num}"
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise UsageError(
                    f"{where}: {len(row)} fields, but the header has {len(header)} "
                    f"({', '.join(header)}); leave a field empty for its default."
                )
            rec: dict[str, Any] = {
                k: v.strip() for k, v in zip(header, row, strict=True) if k and v.strip()
            }
            if "groups" in rec:
                rec["groups"] = [g.strip() for g in rec["groups"].split(";") if g.strip()]
            if "labels" in rec:
                try:
                    rec["labels"] = parse_labels(rec["labels"].split(";"))
                except UsageError as exc:
                    raise UsageError(f"{where}: {exc}") from None
            records.append((where, rec))
    except csv.Error as exc:
        raise UsageError(f"{path}: row {reader.line_num}: not valid CSV ({exc}).") from None
    return records


def _yaml_records(path: Path, located: yamlpos.Located) -> list[tuple[str, Any]]:
    """(where, entry) of each device in the list, located by line and column."""
    data, prefix = located.data, ()
    if isinstance(data, dict) and "devices" in data:
        data, prefix = data["devices"], ("devices",)
    if not isinstance(data, list) or not data:
        raise UsageError(f"{path}: expected a list of devices (or 'devices:' with a list).")
    out = []
    for i, rec in enumerate(data):
        line, col = located.where((*prefix, i))
        out.append((f"{path}:{line}:{col}: entry {i + 1}", rec))
    return out


# ------------------------------------------------------------------ inventory


def inventory_hosts(rows: list[dict]) -> list[inventory.InventoryHost]:
    hosts = []
    for d in rows:
        groups = list(d["groups"]) + [d["role"] + "s"]
        if d.get("arch"):
            groups.append("arch_" + re.sub(r"\W", "_", d["arch"]))
        if d.get("accelerator") and d["accelerator"] != "none":
            groups.append("accel_" + re.sub(r"\W", "_", d["accelerator"].split(":")[0]))
        hosts.append(
            inventory.InventoryHost(
                name=d["name"],
                host=d["host"],
                port=d["port"],
                user=d["user"],
                groups=groups,
                labels=d["labels"],
            )  # fmt: skip
        )
    return hosts


def regenerate_inventory(ws: Workspace, db) -> None:
    """hosts.yml from the devices table (atomic); the controller key applies to all."""
    columns = "name, host, port, user, role, groups, labels, arch, accelerator"  # what it uses
    rows = [evcdb.device_from_row(r) for r in db.query(f"select {columns} from devices")]
    inventory.write(
        ws.inventory,
        inventory_hosts(rows),
        all_vars={"ansible_ssh_private_key_file": str(controller_key(ws)[0])},
    )


# ------------------------------------------------------------------ operations


@dataclass
class DeviceResult:
    """Outcome for one device of an add/facts/ping: ok, unreachable or failed."""

    name: str
    state: str
    message: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class DevicesResult(Result):
    """An add, facts or ping over several devices: one DeviceResult each."""

    action: str
    devices: list[DeviceResult]

    @property
    def failed(self) -> list[DeviceResult]:
        return [d for d in self.devices if d.state in ("failed", "unreachable")]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> list[dict[str, Any]]:
        return [asdict(d) for d in self.devices]


def get(db, name: str) -> dict:
    rows = list(db["devices"].rows_where("name = ?", [name]))
    if not rows:
        known = [r["name"] for r in db.query("select name from devices order by name limit 20")]
        hint = ", ".join(known) if known else "none yet (evc device add)"
        raise UsageError(f"No device named {name!r}. Known devices: {hint}.")
    return evcdb.device_from_row(rows[0])


def add(ws: Workspace, devices: list[Device], *, scan_keys: bool = True,
        password: str | None = None, progress: Progress = SILENT) -> DevicesResult:  # fmt: skip
    """Register devices and gather their facts in one parallel run.

    Validation, duplicate names and changed host keys refuse the whole batch
    before anything is written. An unreachable device is stored as unreachable.
    """
    db = evcdb.workspace_db(ws)
    names = [d.name for d in devices]
    dupes = {n for n in names if names.count(n) > 1}
    existing = {r["name"] for r in db.query("select name from devices")} & set(names)
    if dupes or existing:
        raise UsageError(f"Device name already used: {', '.join(sorted(dupes | existing))}.")
    scanned = {}
    if scan_keys:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(32, len(devices)) or 1) as pool:
            found = pool.map(lambda d: scan_host_keys(d.host, d.port), devices)
            scanned = dict(zip(names, found, strict=True))
        for d in devices:
            check_host_key(ws, d.host, d.port, scanned[d.name])
    if password is not None:
        for d in devices:
            if not scanned.get(d.name):
                raise EVCError(
                    f"{d.host}:{d.port} did not answer SSH, so its host key cannot be pinned "
                    "and no password will be sent to it. Nothing was added."
                )
            pin_host(ws, d.host, d.port, scanned[d.name])
            copy_key(ws, d, password)
    now = time.time()
    with evcdb.transaction(db):
        db["devices"].insert_all(
            evcdb.device_row({**d.model_dump(), "added_at": now, "status": "unknown"})
            for d in devices
        )
    for d in devices:
        if scanned.get(d.name):
            pin_host(ws, d.host, d.port, scanned[d.name])
    regenerate_inventory(ws, db)
    queue.sync_if_running(ws)
    result = gather_facts(ws, ",".join(names), progress=progress)
    return DevicesResult("add", result.devices)


def remove(ws: Workspace, name: str, *, reason: str = "its device was removed") -> dict:
    """Forget a device; its registry pull credential is deleted first (refused at once).

    Its deployments end with it (``reason`` is recorded), so nothing is listed as running
    on a node EVC no longer manages."""
    db = evcdb.workspace_db(ws)
    device = get(db, name)
    pull_credentials.revoke(ws, [name])
    with evcdb.transaction(db):
        deployments.end_on(db, name, reason)
        db["devices"].delete(name)
    regenerate_inventory(ws, db)
    queue.sync_if_running(ws)
    return device


def list_devices(ws: Workspace, group: str | None = None) -> list[dict]:
    db = evcdb.workspace_db(ws)
    if group:
        rows = db.query(
            "select * from devices where exists "
            "(select 1 from json_each(devices.groups) where value = ?) order by name",
            [group],
        )
    else:
        rows = db.query("select * from devices order by name")
    return [evcdb.device_from_row(r) for r in rows]


def next_status(missed: int, answered: bool, offline_after: int) -> tuple[str, int]:
    """Liveness state machine: (status, missed) after one check of a node.

    Answering makes a node online and resets its count of missed checks; a miss
    makes it unreachable, and offline once it has missed ``offline_after`` in a row.
    """
    if answered:
        return "online", 0
    missed += 1
    return ("offline" if missed >= offline_after else "unreachable"), missed


def record_liveness(db, run, offline_after: int, now: float | None = None) -> list[dict]:
    """Apply a run's per-host outcome to devices (heartbeat, missed, status).

    A host that ran (ok, changed, even failed: it answered) is a heartbeat; an
    unreachable one is a miss; a skipped one is left alone. Each status change
    is a ``node_events`` row; the changes are returned.
    """
    now = time.time() if now is None else now
    events = []
    with evcdb.transaction(db):  # read under the write lock: concurrent checks count once each
        for host, r in sorted(run.hosts.items()):
            if r.state == "skipped":
                continue
            rows = list(db.query("select status, missed from devices where name = ?", [host]))
            if not rows:
                continue
            old = rows[0]["status"]
            answered = r.state != "unreachable"
            status, missed = next_status(rows[0]["missed"], answered, offline_after)
            db.execute(
                "update devices set status = ?, missed = ?, last_seen = "
                "case when ? then ? else last_seen end where name = ?",
                [status, missed, answered, now, host],
            )
            if status != old:
                event = {"node": host, "from_state": old, "to_state": status, "at": now}
                db["node_events"].insert(event)
                events.append(event)
    return events


def gather_facts(ws: Workspace, target: str = "all", progress: Progress = SILENT) -> DevicesResult:
    """Run the facts playbook on ``target`` and store what each host reports."""
    db = evcdb.workspace_db(ws)
    run = run_playbook(ws, "facts.yml", target, progress=progress)
    results = []
    with evcdb.transaction(db):
        for host, r in run.hosts.items():
            raw = r.printed("facts")
            facts = {k: raw.get(k) for k in FACT_FIELDS} if raw else {}
            if facts:
                db["devices"].update(host, facts)
            results.append(DeviceResult(host, r.state, r.message, facts))
    record_liveness(db, run, ws.offline_after)
    regenerate_inventory(ws, db)  # arch/accelerator groups follow the facts
    return DevicesResult("facts", results)


def ping(ws: Workspace, target: str = "all", progress: Progress = SILENT) -> DevicesResult:
    """Reach every targeted host in one parallel run; update last_seen and status."""
    db = evcdb.workspace_db(ws)
    run = run_playbook(ws, "ping.yml", target, progress=progress)
    record_liveness(db, run, ws.offline_after)
    return DevicesResult(
        "ping", [DeviceResult(h, r.state, r.message) for h, r in sorted(run.hosts.items())]
    )
