import pytest

from evc import engine
from evc.errors import EVCError, UsageError
from evc.lab import network, nodes
from tests.conftest import evc


@pytest.mark.parametrize("n", [0, -1, nodes.MAX_NODES + 1, 10_000])
def test_node_count_out_of_range(n):
    with pytest.raises(UsageError, match="out of range"):
        nodes.validate_request(n, ["rpi"])


def test_unknown_profile_lists_known_ones():
    with pytest.raises(UsageError, match=r"Unknown profile 'tpu'.*rpi, nuc, orin"):
        nodes.validate_request(3, ["rpi", "tpu"])


def test_profiles_are_distinct_hardware():
    assert len(nodes.PROFILES) >= 3
    specs = {(p.cpus, p.mem_gib, p.arch) for p in nodes.PROFILES.values()}
    assert len(specs) == len(nodes.PROFILES)
    assert nodes.PROFILES["rpi"].cpus == 0.5 and nodes.PROFILES["rpi"].mem_gib == 1


def test_mirror_from_deb822_sources(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert engine.apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path):
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n"
    )
    assert engine.apt_mirror(tmp_path) == "http://m.example/debian"


def test_no_mirror_is_an_environment_error(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://m.example/debian trixie main\n")
    with pytest.raises(EVCError, match="No Debian bookworm mirror"):
        engine.apt_mirror(tmp_path)


@pytest.mark.parametrize(
    "subnet, match",
    [
        ("172.28.0.0/33", "not a network"),
        ("172.28.0.1/24", "not a network"),
        ("172.28.0.0/29", "too small"),
        ("fd00::/64", "IPv4"),
        ("banana", "not a network"),
    ],
)
def test_bad_subnets_fail_before_touching_docker(subnet, match):
    with pytest.raises(UsageError, match=match):
        network.check_subnet(None, subnet, "evc-x", 3)  # no client needed: parsing comes first


class _Net:
    def __init__(self, name, subnet):
        self.name, self.id = name, "0123456789abcdef"
        self.attrs = {"IPAM": {"Config": [{"Subnet": subnet}]}}


class _Client:
    def __init__(self, *nets):
        self.networks = type("N", (), {"list": lambda _self: list(nets)})()


def test_a_clashing_subnet_suggests_one_that_is_free():
    client = _Client(_Net("evc-old", "172.30.0.0/24"), _Net("other", "172.30.1.0/24"))
    with pytest.raises(UsageError, match=r"'evc-old'.*e\.g\. --subnet 172\.30\.2\.0/24"):
        network.check_subnet(client, "172.30.0.0/24", "evc-new", 3)
    assert network.free_subnet(client, "evc-new", "172.30.0.0/24") == "172.30.2.0/24"
    # A lab's own network is no obstacle to itself.
    assert network.free_subnet(client, "evc-old", "172.30.0.0/24") == "172.30.0.0/24"


def test_an_arm64_profile_and_comma_separated_profiles():
    """`evc lab up --profile rpi-arm64,nuc`: the arm64 profile exists and a comma list is
    split (an unknown one in it is named)."""
    assert nodes.PROFILES["rpi-arm64"].arch == "arm64"
    assert {p.arch for p in nodes.PROFILES.values()} == {"amd64", "arm64"}
    proc = evc("lab", "up", "--nodes", "2", "--profile", "rpi-arm64,pi5", check=2)
    assert "Unknown profile 'pi5'" in proc.stderr


class _Node:
    """A container whose `cat` of the host key answers ``outputs`` in turn."""

    def __init__(self, *outputs):
        self.outputs = list(outputs)

    def exec_run(self, cmd):
        return self.outputs.pop(0) if len(self.outputs) > 1 else self.outputs[0]


KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKr3Xx0q+9S2/abc root@node3\n"


def test_an_empty_successful_exec_is_read_again_and_a_bad_host_key_named(monkeypatch):
    """docker-py's exec_run can answer exit 0 with no output (docker/docker-py#2042):
    `lab up` once pinned such an empty host key."""
    monkeypatch.setattr(nodes.time, "sleep", lambda s: None)
    node = _Node((0, b""), (0, b""), (0, KEY))
    assert nodes._host_key(node, "node3") == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKr3Xx0q+9S2/abc"
    assert nodes.exec_read(_Node((0, b"")), ["true"]) == (0, "")  # empty after 3 reads
    with pytest.raises(EVCError, match=r"node3 has no usable SSH host key \(exit 1\): 'cat: x'"):
        nodes._host_key(_Node((1, b"cat: x")), "node3")
    with pytest.raises(EVCError, match=r"\(exit 0\): '\\x01\\x00garbage'"):
        nodes._host_key(_Node((0, b"\x01\x00garbage")), "node3")
