import json

import yaml

from evc import inventory
from evc.inventory import InventoryHost


def test_render_groups_and_hostvars(tmp_path):
    hosts = [
        InventoryHost("n2", "10.0.0.2", groups=["lab", "profile_nuc"], labels={"hw": "nuc"}),
        InventoryHost("n1", "10.0.0.1", port=2222, groups=["lab"]),
    ]
    path = inventory.write(tmp_path / "inv" / "hosts.yml", hosts, {"ansible_user_dir": "/k"})
    data = yaml.safe_load(path.read_text())
    assert list(data["all"]["hosts"]) == ["n1", "n2"]
    assert data["all"]["hosts"]["n1"]["ansible_port"] == 2222
    # Every string value is data for Ansible (never a template); names are keys.
    assert data["all"]["vars"] == {
        "ansible_user_dir": {"__ansible_unsafe": "/k"},
        "evc_generated": {"__ansible_unsafe": inventory.GENERATED_NOTE},
    }
    assert data["all"]["hosts"]["n2"] == {
        "ansible_host": {"__ansible_unsafe": "10.0.0.2"},
        "ansible_port": 22,
        "ansible_user": {"__ansible_unsafe": "root"},
        "evc_labels": {"hw": {"__ansible_unsafe": "nuc"}},
    }
    assert set(data["all"]["children"]["lab"]["hosts"]) == {"n1", "n2"}
    assert set(data["all"]["children"]["profile_nuc"]["hosts"]) == {"n2"}


def test_write_replaces_atomically_and_leaves_no_temp(tmp_path):
    path = tmp_path / "hosts.yml"
    inventory.write(path, [InventoryHost("a", "10.0.0.1")])
    inventory.write(path, [])
    assert yaml.safe_load(path.read_text())["all"]["hosts"] == {}
    assert [p.name for p in tmp_path.iterdir()] == ["hosts.yml"]


def test_emitted_text_is_yaml_that_round_trips_awkward_names(tmp_path):
    hosts = [
        InventoryHost("1e3", "10.0.0.1", groups=["g"], labels={"on": "yes", "n": "007"}),
        InventoryHost("true", "fe80::1", groups=["g"]),
        InventoryHost("null", "h.example.com"),
    ]
    path = inventory.write(tmp_path / "hosts.yml", hosts, {"ansible_ssh_private_key_file": "/k"})
    text = path.read_text()
    expected = inventory.render(
        hosts, {"evc_generated": inventory.GENERATED_NOTE, "ansible_ssh_private_key_file": "/k"}
    )
    assert yaml.safe_load(text) == expected  # it is YAML for Ansible...
    assert json.loads(text) == expected  # ...and JSON, which Ansible parses fast
    assert text.count("\n") >= 8  # one host per line, not one long line


def test_unsafe_marks_every_string_and_keeps_keys_and_other_values():
    value = {"a": "x", "n": [1, "y", ("z",)], "d": {"k": None, "b": True, "f": 1.5}}
    assert inventory.unsafe(value) == {
        "a": {"__ansible_unsafe": "x"},
        "n": [1, {"__ansible_unsafe": "y"}, [{"__ansible_unsafe": "z"}]],
        "d": {"k": None, "b": True, "f": 1.5},
    }
