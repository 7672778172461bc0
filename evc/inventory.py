"""Ansible inventory (YAML) written atomically from a list of host records.

Every string value in it is marked unsafe (:func:`unsafe`): Ansible templates host
vars, so a label value such as ``{{ lookup('pipe', ...) }}`` would otherwise run on
the controller whenever a play reads it. In the inventory it is data.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class InventoryHost:
    name: str
    host: str
    port: int = 22
    user: str = "root"
    groups: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    def hostvars(self) -> dict:
        return {
            "ansible_host": self.host,
            "ansible_port": self.port,
            "ansible_user": self.user,
            "evc_labels": dict(self.labels),
        }


def unsafe(value: Any) -> Any:
    """``value`` with every string in it marked as data for Ansible, recursively.

    ``{"__ansible_unsafe": "..."}`` is the serialised form ansible-core (2.19) honours
    in JSON extra vars and JSON inventories: the string is used as it is, never
    rendered as a template, and still works with filters (``| int``, ``| bool``),
    lookups and as a dict index. ``wrap_var`` objects are no use here: they lose the
    mark when ansible-runner serialises extra vars to JSON. Dict keys stay as they
    are: Ansible never templates them.
    """
    if isinstance(value, str):
        return {"__ansible_unsafe": value}
    if isinstance(value, dict):
        return {k: unsafe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unsafe(v) for v in value]
    return value


GENERATED_NOTE = "written by EVC from the device database; edits are overwritten"


def render(hosts: Iterable[InventoryHost], all_vars: dict | None = None) -> dict:
    """The inventory as a dict: every host under all.hosts, plus one entry per group.

    ``all_vars`` go to all.vars: paths and settings only, never a secret. Every string
    value (addresses, users, labels, all.vars) is marked unsafe; names are keys.
    """
    all_hosts: dict[str, dict] = {}
    groups: dict[str, dict] = {}
    for h in sorted(hosts, key=lambda h: h.name):
        all_hosts[h.name] = unsafe(h.hostvars())
        for g in h.groups:
            groups.setdefault(g, {"hosts": {}})["hosts"][h.name] = None
    out = {"all": {"hosts": all_hosts, "children": dict(sorted(groups.items()))}}
    if all_vars:
        out["all"]["vars"] = unsafe(dict(all_vars))
    return out


def emit(tree: dict, depth: int = 0, block_depth: int = 3) -> str:
    """JSON with the top levels spread over lines and one host or group per line.

    JSON is valid YAML, and Ansible's loader parses it with ``json.loads`` before
    trying its (much slower) YAML parser: with 10,000 hosts that is the difference
    between seconds and a fraction of one. Keys are quoted, so a host named ``1e3``
    or ``true`` stays a string.
    """
    if not isinstance(tree, dict) or not tree or depth >= block_depth:
        return json.dumps(tree, sort_keys=True)
    pad = "  " * (depth + 1)
    items = ",\n".join(
        f"{pad}{json.dumps(k)}: {emit(v, depth + 1, block_depth)}" for k, v in tree.items()
    )
    return "{\n" + items + "\n" + "  " * depth + "}"


def subset(tree: dict, hosts: list[str]) -> dict:
    """``tree`` (YAML-shaped) with only ``hosts`` in it: every group and variable kept,
    each group's host list cut to those. ansible-playbook then loads the hosts a run
    targets, not the whole fleet."""
    keep = set(hosts)

    def cut(node):
        if not isinstance(node, dict):
            return node
        out = {k: cut(v) if k == "children" else v for k, v in node.items() if k != "hosts"}
        if isinstance(node.get("children"), dict):
            out["children"] = {g: cut(sub) for g, sub in node["children"].items()}
        if "hosts" in node:
            out["hosts"] = {h: v for h, v in (node["hosts"] or {}).items() if h in keep}
        return out

    return {name: cut(group) for name, group in tree.items()}


def write(path: Path, hosts: Iterable[InventoryHost], all_vars: dict | None = None) -> Path:
    """Write ``hosts.yml`` atomically (temp file + rename): readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = render(hosts, {"evc_generated": GENERATED_NOTE, **(all_vars or {})})
    text = emit(tree) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hosts-", suffix=".yml")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
