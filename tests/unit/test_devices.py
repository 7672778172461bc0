"""Device validation and bookkeeping that needs no network: bad input changes nothing."""

import time

import pytest
import yaml

from evc import db as evcdb
from evc import devices
from evc.errors import UsageError
from evc.targets import resolve_hosts
from tests.conftest import evc


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("name", "bad name", "name: 'bad name' is not a device name: letters"),
        ("name", "x;rm -rf /", "name: .* is not a device name"),
        ("name", "$(id)", "name: .* is not a device name"),
        ("name", "{{ lookup('pipe', 'id') }}", "name: .* is not a device name"),
        ("host", "300.1.1.1", "host: '300.1.1.1' is not an IPv4/IPv6 address"),
        ("host", "exa mple.com", "host: .* is not an IPv4/IPv6 address or a DNS host name"),
        ("host", "-oProxyCommand=x", "host: .* is not an IPv4"),
        ("host", "{{ lookup('pipe', 'id') }}", "host: .* is not an IPv4"),
        ("port", 0, "port: Input should be greater than or equal to 1"),
        ("port", 70000, "port: Input should be less than or equal to 65535"),
        ("user", "Root User", "user: 'Root User' is not a POSIX user name"),
        ("user", "{{ x }}", "user: .* is not a POSIX user name"),
        ("role", "boss", "role: 'boss' is not a role: expected 'builder' or 'worker'"),
        ("groups", ["all"], r"groups.0: group 'all' is reserved"),
        ("groups", ["Jetson Nano"], "groups.0: 'Jetson Nano' is not a group name"),
        ("groups", ["{{ x }}"], "groups.0: .* is not a group name"),
        ("lat", 91.0, "lat: Input should be less than or equal to 90"),
        ("labels", {"bad key": "v"}, r"labels.bad key.\[key\]: 'bad key' is not a label key"),
        ("labels", {"k": "line\nbreak"}, "labels.k: .* is not plain text"),
    ],
)
def test_each_bad_field_is_named(field, value, match):
    data = {"name": "n1", "host": "10.0.0.1", field: value}
    with pytest.raises(UsageError, match=match):
        devices.parse_device(data)


def test_good_device_is_normalised():
    d = devices.parse_device(
        {"name": "jetson-01", "host": "Edge.Example.COM", "groups": ["b", "a", "a"]}
    )
    assert d.host == "edge.example.com" and d.groups == ["a", "b"] and d.role == "worker"
    assert devices.parse_device({"name": "x", "host": "fe80::1"}).host == "fe80::1"


def test_labels_parse():
    assert devices.parse_labels(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        devices.parse_labels(["novalue"])


def _count(ws):
    return evcdb.workspace_db(ws)["devices"].count


def test_cli_bad_input_exits_2_and_writes_nothing(workspace):
    for args, named in (
        (["bad name", "--host", "10.0.0.1"], "NAME: 'bad name' is not a device name"),
        (["n1", "--host", "10.0.0.999"], "--host: '10.0.0.999' is not an IPv4/IPv6 address"),
        (["n1", "--host", "10.0.0.1", "--port", "99999"], "--port: Input should be less than"),
        (["n1", "--host", "10.0.0.1", "--label", "oops"], "--label: 'oops': expected KEY=VALUE"),
    ):
        proc = evc("device", "add", *args, check=2)
        assert "Traceback" not in proc.stderr and named in proc.stderr, proc.stderr
    assert _count(workspace) == 0
    assert not workspace.inventory.exists()


def test_duplicate_name_is_refused_before_any_network(workspace):
    db = evcdb.workspace_db(workspace)
    db["devices"].insert(evcdb.device_row({"name": "n1", "host": "10.9.9.9", "added_at": 1.0}))
    proc = evc("device", "add", "n1", "--host", "10.0.0.2", check=2)
    assert "already used: n1" in proc.stderr
    assert [r["host"] for r in db["devices"].rows] == ["10.9.9.9"]


def test_unknown_device_lists_known_ones(workspace):
    db = evcdb.workspace_db(workspace)
    db["devices"].insert(evcdb.device_row({"name": "pi1", "host": "10.0.0.5", "added_at": 1.0}))
    proc = evc("device", "show", "pi9", check=2)
    assert "No device named 'pi9'" in proc.stderr and "pi1" in proc.stderr
    proc = evc("device", "remove", "pi9", check=2)
    assert _count(workspace) == 1


def test_inventory_from_database_has_role_arch_and_accel_groups(workspace):
    db = evcdb.workspace_db(workspace)
    rows = [
        {
            "name": "orin1",
            "host": "10.0.0.1",
            "role": "worker",
            "groups": ["jetson"],
            "labels": {},
            "arch": "arm64",
            "accelerator": "jetson",
            "added_at": time.time(),
        },
        {
            "name": "nuc1",
            "host": "10.0.0.2",
            "role": "builder",
            "groups": [],
            "arch": "amd64",
            "accelerator": "none",
            "labels": {"site": "lab"},
            "added_at": time.time(),
        },
    ]
    db["devices"].insert_all(evcdb.device_row(r) for r in rows)
    devices.regenerate_inventory(workspace, db)
    inv = yaml.safe_load(workspace.inventory.read_text())
    groups = {g: set(v["hosts"]) for g, v in inv["all"]["children"].items()}
    assert groups == {
        "jetson": {"orin1"},
        "workers": {"orin1"},
        "builders": {"nuc1"},
        "arch_arm64": {"orin1"},
        "arch_amd64": {"nuc1"},
        "accel_jetson": {"orin1"},
    }
    assert inv["all"]["hosts"]["nuc1"]["evc_labels"] == {"site": {"__ansible_unsafe": "lab"}}
    key_file = inv["all"]["vars"]["ansible_ssh_private_key_file"]["__ansible_unsafe"]
    assert key_file.endswith("/.evc/keys/id_ed25519")
    assert "PRIVATE" not in workspace.inventory.read_text()
    # Ansible patterns resolve against it; an unknown group names the known ones.
    assert resolve_hosts(workspace.inventory, "workers:&arch_arm64") == ["orin1"]
    with pytest.raises(UsageError, match="Known groups: .*jetson"):
        resolve_hosts(workspace.inventory, "raspberries")


@pytest.mark.parametrize(
    "name, text, match",
    [
        (
            "d.yaml",
            "- {name: a, host: 10.0.0.1}\n- {name: b, host: 10.0.0.300}\n",
            r"entry 2 \(name 'b'\): invalid device: host",
        ),
        ("d.yaml", "devices: [unclosed\n", "not valid YAML"),
        ("d.yaml", "just text\n", "expected a list of devices"),
        ("d.yaml", "- [a, b]\n", "entry 1: expected a mapping"),
        ("d.yaml", "- {name: a, host: 10.0.0.1, colour: red}\n", "colour: Extra inputs"),
        ("d.csv", "name,address\na,10.0.0.1\n", "header must name at least 'name' and 'host'"),
        (
            "d.csv",
            "name,host,port\na,10.0.0.1,22\nb c,10.0.0.2,22\n",
            r"row 3 \(name 'b c'\): invalid device: name",
        ),
        ("d.csv", "name,host,port\na,10.0.0.1,x\n", "row 2 .*port: Input should be a valid"),
        ("d.csv", "name,host,labels\na,10.0.0.1,oops\n", "row 2: --label 'oops'"),
    ],
)
def test_malformed_import_file_names_the_row(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError, match=match):
        devices.load_file(path)


def test_import_file_parses_yaml_and_csv(tmp_path):
    (tmp_path / "f.yaml").write_text(
        "devices:\n  - {name: orin1, host: 10.0.0.1, groups: [jetson], labels: {site: a}}\n"
    )
    (tmp_path / "f.csv").write_text(
        "name,host,port,groups,labels,lat\npi1,10.0.0.2,2222,rpi;edge,site=b;rack=3,51.5\n"
    )
    (y,) = devices.load_file(tmp_path / "f.yaml")
    (c,) = devices.load_file(tmp_path / "f.csv")
    assert y.groups == ["jetson"] and y.labels == {"site": "a"}
    assert c.port == 2222 and c.groups == ["edge", "rpi"] and c.labels == {"site": "b", "rack": "3"}
    assert c.lat == 51.5


def test_cli_import_of_a_bad_file_changes_nothing(workspace, tmp_path):
    bad = tmp_path / "fleet.csv"
    bad.write_text("name,host\ngood,10.0.0.1\nbad;name,10.0.0.2\n")
    proc = evc("device", "import", bad, check=2)
    assert "fleet.csv: row 3" in proc.stderr and "Traceback" not in proc.stderr
    assert evc("device", "import", tmp_path / "missing.yaml", check=2).stderr.count("no such file")
    assert _count(workspace) == 0


def test_unknown_target_is_a_usage_error_listing_groups(workspace):
    db = evcdb.workspace_db(workspace)
    db["devices"].insert(
        evcdb.device_row({"name": "pi1", "host": "10.0.0.5", "groups": ["rpi"], "added_at": 1.0})
    )
    devices.regenerate_inventory(workspace, db)
    for command in ("ping", "facts"):
        proc = evc("device", command, "jetsons", check=2)
        assert "matches no host" in proc.stderr and "Known groups: rpi, workers" in proc.stderr
    assert db["ansible_runs"].count == 0
