"""Target patterns resolved with Ansible's rules, without Ansible's inventory loader.

Ansible's InventoryManager builds every host's variables before it matches a pattern:
5.2 s for 10,000 hosts, paid again by ansible-playbook. A pattern needs only host
names and groups, which the inventory EVC writes from the devices table holds as JSON
(read in milliseconds). :func:`match` is Ansible 2.19's ``list_hosts`` over those
(``,``/``:`` lists, ``&``/``!``, globs, ``~regex``, ``[i]``/``[i:j]`` subscripts, the
same order); ``tests/unit/test_targets.py`` checks it against InventoryManager. The one
difference: an unknown ``localhost`` is no match here (Ansible runs it on the
controller), since a fleet command is for devices. :mod:`evc.ansible` then hands
ansible-playbook an inventory of the matched hosts alone (:func:`evc.inventory.subset`).
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from evc.errors import UsageError

# ansible.inventory.manager.PATTERN_WITH_SUBSCRIPT
_SUBSCRIPT = re.compile(r"^(.+)\[(?:(-?[0-9]+)|([0-9]+)([:-])([0-9]*))\]$")
_LIST = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")  # split_host_pattern's ':' form
HINT = "Use a host name, a group or an Ansible pattern such as 'group:&other'."


class PatternError(ValueError):
    """A pattern Ansible would refuse; the message is Ansible's reason."""


@dataclass
class Members:
    """Host names in inventory order and each group's hosts (descendants included),
    ``all`` and ``ungrouped`` first, as Ansible orders them."""

    hosts: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)


def load(path: Path) -> dict:
    """An inventory file as a tree: JSON (what EVC writes) fast, any other YAML slowly."""
    text = path.read_text()
    try:
        return json.loads(text) or {}
    except ValueError:
        import yaml

        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}


def members(tree: dict) -> Members:
    """Names and groups of a YAML-shaped inventory tree (``all: {hosts, children}``)."""
    own: dict[str, list[str]] = {"all": [], "ungrouped": []}
    kids: dict[str, list[str]] = {"all": [], "ungrouped": []}
    in_group: dict[str, int] = {}

    def walk(name: str, node: dict | None) -> None:
        node = node or {}
        own.setdefault(name, [])
        kids.setdefault(name, [])
        for host in node.get("hosts") or {}:
            if host not in own[name]:
                own[name].append(host)
            in_group.setdefault(host, 0)
            in_group[host] += name != "all"
        for child, sub in (node.get("children") or {}).items():
            if child not in kids[name]:
                kids[name].append(child)
            walk(child, sub)

    root = tree.get("all") or {}
    walk("all", root)
    for name, node in tree.items():  # top-level groups other than all
        if name != "all":
            walk(name, node)
    hosts = list(in_group)
    own["ungrouped"] = [h for h in hosts if not in_group[h]]

    def expand(name: str, seen: set[str]) -> list[str]:
        out = list(own[name])
        for child in kids[name]:
            if child not in seen:
                seen.add(child)
                out += expand(child, seen)
        return out

    groups = {}
    for name in own:
        expanded = expand(name, {name})
        groups[name] = list(dict.fromkeys(expanded))
    groups["all"] = list(dict.fromkeys(groups["all"] + hosts))
    return Members(hosts, groups)


def split(pattern: str) -> list[str]:
    """ansible.inventory.manager.split_host_pattern."""
    if "," in pattern:
        parts = pattern.split(",")
    else:
        from ansible.parsing.utils.addresses import parse_address

        try:
            parse_address(pattern, allow_ranges=True)
            parts = [pattern]
        except Exception:  # noqa: BLE001 - Ansible's own test: not one address
            parts = _LIST.findall(pattern)
    return [p.strip() for p in parts if p.strip()]


def _names(items, pattern: str) -> list[str]:
    try:
        rx = re.compile(pattern[1:] if pattern[0] == "~" else fnmatch.translate(pattern))
    except re.error:
        raise PatternError(f"Invalid host list pattern: {pattern}") from None
    return [i for i in items if rx.match(i)]


def _one(m: Members, pattern: str) -> list[str]:
    if pattern[0] in "&!":
        pattern = pattern[1:]
    if not pattern:
        raise PatternError("'!' and '&' need a name after them")
    expr, subscript = pattern, None
    hit = None if pattern[0] == "~" else _SUBSCRIPT.match(pattern)
    if hit:
        expr, idx, start, _sep, end = hit.groups()
        subscript = (int(idx), None) if idx else (int(start), int(end) if end else -1)
    groups = _names(m.groups, expr)
    found = [h for g in groups for h in m.groups[g]]
    if not groups or expr[0] == "~" or any(c in expr for c in ".?*["):
        found += _names(m.hosts, expr)
    if found and subscript:
        start, end = subscript
        try:
            if end:
                found = found[start : (len(found) - 1 if end == -1 else end) + 1]
            else:
                found = [found[start]]
        except IndexError:
            raise PatternError(f"No hosts matched the subscripted pattern '{pattern}'") from None
    return found


def match(m: Members, target: str) -> list[str]:
    """The hosts ``target`` selects, in Ansible's order; PatternError when Ansible
    would refuse it."""
    parts = split(target)
    regular = [p for p in parts if p[0] not in "&!"] or ["all"]
    ordered = regular + [p for p in parts if p[0] == "&"] + [p for p in parts if p[0] == "!"]
    known = set(m.hosts)
    hosts: list[str] = []
    for p in ordered:
        if p in known:
            hosts.append(p)
            continue
        that = _one(m, p)
        if p[0] == "!":
            drop = set(that)
            hosts = [h for h in hosts if h not in drop]
        elif p[0] == "&":
            keep = set(that)
            hosts = [h for h in hosts if h in keep]
        else:
            have = set(hosts)
            hosts += [h for h in that if h not in have]
    return list(dict.fromkeys(hosts))


def resolve_hosts(inventory: Path, target: str) -> list[str]:
    """Hosts the pattern ``target`` matches in ``inventory``; a clear error if none."""
    return select(inventory, target)[0]


def select(inventory: Path, target: str) -> tuple[list[str], dict]:
    """(the hosts ``target`` matches, the inventory tree they come from), read once."""
    if not inventory.is_file():
        raise UsageError(f"No inventory at {inventory}: add devices or run `evc lab up` first.")
    tree = load(inventory)
    m = members(tree)
    try:
        hosts = match(m, target)
    except PatternError as exc:
        raise UsageError(
            f"Target {target!r} is not a pattern Ansible can use ({exc}). {HINT}"
        ) from None
    if not hosts:
        known = ", ".join(sorted(g for g in m.groups if g not in ("all", "ungrouped"))) or "none"
        raise UsageError(
            f"Target {target!r} matches no host in {inventory}. {HINT} Known groups: {known}."
        )
    return hosts, tree
