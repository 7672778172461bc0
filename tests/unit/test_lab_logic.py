import pytest

from evc import lab
from evc.errors import EVCError, UsageError


@pytest.mark.parametrize("n", [0, -1, lab.MAX_NODES + 1, 10_000])
def test_node_count_out_of_range(n):
    with pytest.raises(UsageError, match="out of range"):
        lab.validate_request(n, ["rpi"])


def test_unknown_profile_lists_known_ones():
    with pytest.raises(UsageError, match=r"Unknown profile 'tpu'.*rpi, nuc, orin"):
        lab.validate_request(3, ["rpi", "tpu"])


def test_profiles_are_distinct_hardware():
    assert len(lab.PROFILES) >= 3
    specs = {(p.cpus, p.mem_gib) for p in lab.PROFILES.values()}
    assert len(specs) == len(lab.PROFILES)
    assert lab.PROFILES["rpi"].cpus == 0.5 and lab.PROFILES["rpi"].mem_gib == 1


def test_mirror_from_deb822_sources(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert lab.apt_mirror(tmp_path) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path):
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n"
    )
    assert lab.apt_mirror(tmp_path) == "http://m.example/debian"


def test_no_mirror_is_an_environment_error(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://m.example/debian trixie main\n")
    with pytest.raises(EVCError, match="No Debian bookworm mirror"):
        lab.apt_mirror(tmp_path)


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
        lab.check_subnet(None, subnet, "evc-x", 3)  # no client needed: parsing comes first
