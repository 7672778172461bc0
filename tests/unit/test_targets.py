"""Targets resolved by evc.targets give what Ansible's InventoryManager gives, same order."""

import json

import pytest
from ansible.errors import AnsibleError
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader

from evc import devices, inventory, targets
from evc.errors import UsageError

ROWS = [
    {"name": n, "host": f"10.0.0.{i}", "port": 22, "user": "root", "role": role,
     "groups": groups, "labels": {"lab": "x"}, "arch": arch, "accelerator": accel}
    for i, (n, role, groups, arch, accel) in enumerate([
        ("node1", "worker", ["lab", "profile_rpi"], "aarch64", "none"),
        ("node2", "worker", ["lab", "profile_nuc"], "x86_64", "none"),
        ("node3", "builder", ["lab", "profile_orin"], "aarch64", "nvidia:orin"),
        ("edge-01.site", "worker", ["site_a"], "x86_64", None),
        ("edge-02.site", "worker", [], None, None),
        ("lab", "worker", ["odd"], None, None),  # a host named like a group
        ("ungrouped", "worker", [], None, None),
        ("n10", "worker", ["profile_light"], "x86_64", None),
    ], start=1)
]  # fmt: skip

PATTERNS = [
    "all", "*", "node1", "lab", "profile_rpi", "workers", "builders", "arch_aarch64",
    "accel_nvidia", "lab:&profile_rpi", "lab:!node2", "lab,site_a", "node1,node3,node2",
    "lab:&arch_aarch64:!builders", "!lab", "&lab", "node*", "node?", "edge-0*.site",
    "*.site", "~node[13]", "~n", "~(node1|edge)", "lab[0]", "lab[-1]", "lab[1:]",
    "lab[0:1]", "lab[0-1]", "profile_*", "prof*:&work*", "ungrouped", "ungr*", "al*",
    "workers:!lab:!odd", "odd", "lab:site_a", " node1 , node2 ", "n1*", "nope",
    "nope,node1", "lab:&nope", "lab[5]",
]  # fmt: skip


@pytest.fixture(scope="module")
def inv(tmp_path_factory):
    path = tmp_path_factory.mktemp("inv") / "hosts.yml"
    inventory.write(path, devices.inventory_hosts(ROWS), {"ansible_ssh_private_key_file": "/k"})
    return path


@pytest.fixture(scope="module")
def ansible_manager(inv):
    return InventoryManager(loader=DataLoader(), sources=[str(inv)])


def ansible(manager, pattern):
    try:
        return [h.name for h in manager.get_hosts(pattern)]
    except (AnsibleError, IndexError) as exc:
        return type(exc).__name__


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_form_matches_ansible(inv, ansible_manager, pattern):
    m = targets.members(targets.load(inv))
    try:
        ours = targets.match(m, pattern)
    except targets.PatternError:
        ours = "error"
    theirs = ansible(ansible_manager, pattern)
    if isinstance(theirs, str):
        assert ours == "error", (pattern, ours, theirs)
    else:
        assert ours == theirs, pattern


def test_bad_patterns_are_clear_errors(inv):
    for target, says in [
        ("lab:&", "'!' and '&' need a name after them"),
        ("~(", "Invalid host list pattern"),
        ("lab[99]", "No hosts matched the subscripted pattern 'lab[99]'"),
    ]:
        with pytest.raises(UsageError, match="is not a pattern Ansible can use") as err:
            targets.resolve_hosts(inv, target)
        assert says in str(err.value)


def test_a_pattern_that_matches_nothing_names_the_groups(inv):
    with pytest.raises(UsageError) as err:
        targets.resolve_hosts(inv, "profile_gpu")
    assert "matches no host" in str(err.value)
    assert "Known groups: accel_nvidia, arch_aarch64" in str(err.value)
    for target in ("localhost", "lab:&profile_gpu"):  # no implicit controller host either
        with pytest.raises(UsageError, match="matches no host"):
            targets.resolve_hosts(inv, target)


def test_yaml_inventories_with_nested_groups_still_resolve(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text(
        "all:\n  hosts:\n    a: {}\n  children:\n    top:\n      hosts: {b: null}\n"
        "      children:\n        leaf:\n          hosts: {c: null, a: null}\n"
    )
    manager = InventoryManager(loader=DataLoader(), sources=[str(path)])
    m = targets.members(targets.load(path))
    for pattern in ("all", "top", "leaf", "ungrouped", "top:!leaf", "top[1]"):
        assert targets.match(m, pattern) == ansible(manager, pattern), pattern


def test_subset_keeps_groups_and_vars_and_only_the_hosts(inv):
    tree = targets.load(inv)
    cut = inventory.subset(tree, ["node1", "n10"])
    assert list(cut["all"]["hosts"]) == ["n10", "node1"]
    assert cut["all"]["vars"] == tree["all"]["vars"]
    assert cut["all"]["hosts"]["node1"] == tree["all"]["hosts"]["node1"]
    assert list(cut["all"]["children"]["lab"]["hosts"]) == ["node1"]
    assert cut["all"]["children"]["site_a"]["hosts"] == {}
    # Ansible reads it and sees exactly those hosts, in the same groups.
    path = inv.parent / "cut.json"
    path.write_text(json.dumps(cut))
    manager = InventoryManager(loader=DataLoader(), sources=[str(path)])
    assert sorted(h.name for h in manager.get_hosts("all")) == ["n10", "node1"]
    assert [h.name for h in manager.get_hosts("profile_light")] == ["n10"]
