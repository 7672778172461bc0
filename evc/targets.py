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
_SEPARATOR = re.compile(r"[\s:\[\]]")  # what _LIST can split on
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
    own: dict[str, dict[str, None]] = {"all": {}, "ungrouped": {}}  # dicts: ordered sets
    kids: dict[str, dict[str, None]] = {"all": {}, "ungrouped": {}}
    grouped: dict[str, bool] = {}  # host -> in a group other than all

    def walk(name: str, node: dict | None) -> None:
        node = node or {}
        own.setdefault(name, {}).update(dict.fromkeys(node.get("hosts") or {}))
        for host in node.get("hosts") or {}:
            grouped[host] = grouped.get(host, False) or name != "all"
        kids.setdefault(name, {})
        for child, sub in (node.get("children") or {}).items():
            kids[name][child] = None
            walk(child, sub)

    walk("all", tree.get("all"))
    for name, node in tree.items():  # top-level groups other than all
        if name != "all":
            walk(name, node)
    hosts = list(grouped)
    own["ungrouped"] = {h: None for h in hosts if not grouped[h]}

    def expand(name: str, seen: set[str]) -> dict[str, None]:
        out = dict(own[name])
        for child in kids[name]:
            if child not in seen:
                seen.add(child)
                out.update(expand(child, seen))
        return out

    groups = {name: list(expand(name, {name})) for name in own}
    groups["all"] = list(dict.fromkeys(groups["all"] + hosts))
    return Members(hosts, groups)


def split(pattern: str) -> list[str]:
    """ansible.inventory.manager.split_host_pattern."""
    if "," in pattern:
        parts = pattern.split(",")
    elif not _SEPARATOR.search(pattern):  # one pattern either way: skip Ansible's import
        parts = [pattern]
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
