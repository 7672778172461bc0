"""Fuzzing the run-config loader and the device importer (issue 14, point 5): whatever
the bytes, loading gives a result or a UsageError that names the file (exit 2),
never another exception, and the CLI exits 0 or 2 without a traceback.

Inputs: arbitrary bytes and text, a soup of YAML and EVC tokens (anchors, aliases,
merge keys, tags, ``${...}``, brackets, odd line breaks), and mutations of the real
files in run_cfg/ (lines deleted, duplicated, spliced from another file, tokens
inserted). Hypothesis runs derandomized and without an example database, so that
every run, here and in CI, tries the same inputs; a failure prints the input.
"""

import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from evc import devices
from evc.config import init_workspace
from evc.errors import UsageError
from evc.resources import data_dir
from evc.run import config
from tests.conftest import evc
from tests.unit.test_scenario import lab_like

SEEDS = [p.read_text() for p in sorted(data_dir("run_cfg").glob("*.yaml"))]
DEVICE_SEEDS = [
    "devices:\n  - {name: orin1, host: 10.0.0.1, groups: [jetson], labels: {site: a}}\n"
    "  - name: pi1\n    host: pi.example\n    port: 2222\n    lat: 51.5\n",
    "- &d {name: a, host: 10.0.0.1, user: pi, role: builder}\n- {<<: *d, name: b}\n",
]
CSV_SEEDS = [
    "name,host,port,user,role,groups,labels,lat,lon\n"
    "pi1,10.0.0.2,2222,pi,worker,rpi;edge,site=b;rack=3,51.5,4.9\n"
    '"orin 1",10.0.0.3,,,builder,,"k=v",,\n',
]
TOKENS = [
    "version: 1\n", "steps:\n", "  - do: registry.up\n", "  - do: cert.push\n",
    "    target: ${nodes}\n", "    with: {ref: 'm:${version}'}\n", "    when: not x\n",
    "vars:\n", "  version: '1.0'\n", "  nodes: lab\n", "  x: ${x}\n", "devices:\n",
    "  - {name: a, host: 10.0.0.1}\n", "x-a: &a [1, {k: v}]\n", "x-b: &b {<<: *a}\n",
    "&a ", "&b ", "*a", "*b", "<<: *a\n", "<<: [*a, *b]\n", "${version}", "${nodes}${nodes}",
    "${undefined}", "$${", "${env.HOME}", "${", "}", "[", "]", "{", "}", ": ", ", ", "- ",
    "? ", "!!binary aGk=", "!!timestamp ", "!!set ", "!!int ", "!!python/object:os.system ",
    "!local ", "2023-13-45", "0x1F", ".nan", "~", "null", "yes", "1e999", "\t", "\ufeff",
    "\x85", "\u2028", "\r", "'", '"', "|\n", ">-\n", "# c\n", "\\", "---\n", "...\n",
    "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "    ", "  ", "\n", "a" * 300, "é", "😀",
]  # fmt: skip
FIELDS = ["name", "host", "port", "user", "role", "groups", "labels", "lat", "lon", "", "x"]
VALUES = [
    "a", "pi-1", "10.0.0.1", "::1", "host.example", "22", "0", "70000", "-1", "root", "pi",
    "worker", "builder", "rpi;edge", "site=a;rack=2", "k", "=v", "51.5", "nan", "inf", "",
    " ", '"', '""', '"a,b"', "a\nb", ";", ",", "x" * 300, "é", "\t",
]  # fmt: skip

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=5),  # a bounded input loads in milliseconds
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@st.composite
def mutated(draw, seeds: list[str]) -> str:
    """A real file with a few lines deleted, duplicated, spliced in or tokens inserted."""
    lines = draw(st.sampled_from(seeds)).splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "duplicate", "splice", "insert"]))
        i = draw(st.integers(0, len(lines)))
        if op == "delete":
            del lines[i : i + draw(st.integers(1, 4))]
        elif op == "duplicate":
            lines[i:i] = lines[i : i + draw(st.integers(1, 8))] * draw(st.integers(1, 4))
        elif op == "splice":
            other = draw(st.sampled_from(seeds)).splitlines(keepends=True)
            start = draw(st.integers(0, len(other)))
            lines[i:i] = other[start : start + draw(st.integers(1, 10))]
        else:
            line = lines[i] if i < len(lines) else ""
            at = draw(st.integers(0, len(line)))
            lines[i : i + 1] = [line[:at] + draw(st.sampled_from(TOKENS)) + line[at:]]
    return "".join(lines)


# The file format's words, written here rather than read from evc.run.capabilities:
# the fuzzer needs plausible steps, not the current list of options.
KINDS = {
    "device.add": ["name", "host", "port", "group", "label", "lat"],
    "device.import": ["file"],
    "device.check": [],
    "registry.up": ["image"],
    "cert.push": ["system_trust"],
    "model.build": ["name", "runtime", "version", "weights", "force"],
    "model.deploy": ["ref", "serial", "max_fail_percent", "cpus", "memory"],
    "infer.run": ["model", "data", "retries", "conf", "fps", "shard_size"],
    "grafana.build": ["out"],
}
WORDS = [
    "${v}", "${w}", "x${v}y", "$${v}", "${env.HOME}", "${nope}", "samples", "devices.csv",
    "yolov8n.yaml", "lab", "all", "lab:&profile_rpi", "lab:!", "~(", "lab[9]", "node1,node2",
    "m:1", "25%", "1g", "d" * 300, "",
]  # fmt: skip
values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
        st.sampled_from(WORDS),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)  # fmt: skip
step = st.fixed_dictionaries(
    {"do": st.sampled_from(list(KINDS))},
    optional={
        "name": st.sampled_from(["a", "b", "a b", 3]),
        "target": values,
        "when": st.one_of(st.booleans(), st.sampled_from(["not v", "v == 'lab'", "w >", "1 + 1"])),
        "continue_on_error": values,
    },
).flatmap(
    lambda s: st.dictionaries(st.sampled_from([*KINDS[s["do"]], "bogus"]), values, max_size=4).map(
        lambda options: {**s, "with": options}
    )
)
document = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 1, 1, 2, "1"]), "steps": st.lists(step, max_size=4)},
    optional={
        "vars": st.dictionaries(st.sampled_from(["v", "w", "x", "env", "2x"]), values, max_size=3),
        "devices": st.lists(
            st.dictionaries(st.sampled_from(["name", "host", "port", "groups", "labels"]), values),
            max_size=2,
        ),
        "description": values,
    },
)
soup = st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)
csv_soup = st.lists(
    st.lists(st.sampled_from(VALUES), max_size=10).map(",".join), min_size=1, max_size=8
).flatmap(
    lambda rows: st.tuples(
        st.lists(st.sampled_from(FIELDS), min_size=1, max_size=10).map(",".join),
        st.sampled_from(["\n", "\r\n", "\r"]),
    ).map(lambda head: head[1].join([head[0], *rows]))
)
run_config_text = st.one_of(
    mutated(SEEDS), soup, document.map(yaml.safe_dump), st.text(max_size=2000)
)
device_text = st.one_of(mutated(DEVICE_SEEDS + SEEDS), mutated(CSV_SEEDS), csv_soup, soup)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """Where fuzzed files go, with what the real run-configs refer to next to them."""
    path = tmp_path_factory.mktemp("fuzz")
    (path / "samples").mkdir()
    (path / "devices.csv").write_text(CSV_SEEDS[0])
    return path


def _outcome(load, path: Path, content: bytes):
    """``load(path)``'s result, or None for a UsageError that names the file."""
    path.write_bytes(content)
    try:
        return load(path)
    except UsageError as exc:
        assert str(path) in str(exc)
        return None


def _load_run_config(path: Path, content: bytes) -> None:
    scenario = _outcome(config.load, path, content)
    if scenario is not None:  # what `evc run` records and --json prints
        json.dumps(scenario.to_dict(), default=str)


@settings(FUZZ, max_examples=150)
@given(content=st.binary(max_size=3000))
def test_any_bytes_as_a_run_config(scratch, content):
    _load_run_config(scratch / "any.yaml", content)


@settings(FUZZ, max_examples=250)
@given(text=run_config_text)
def test_yamlish_run_configs(scratch, text):
    _load_run_config(scratch / "run.yaml", text.encode("utf-8"))


def _growing(kind: str, fanout: int, levels: int) -> str:
    """Each level repeats the one below ``fanout`` times: by aliases, in a string, in a list."""
    if kind == "alias":
        lines = ["x-l0: &l0 [lol]"]
        lines += [
            f"x-l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fanout) + "]" for i in range(1, levels)
        ]
        lines.append(f"vars: {{top: *l{levels - 1}}}")
    else:
        lines = ["vars:", "  l0: lol"]
        for i in range(1, levels):
            ref = f"${{l{i - 1}}}"
            value = f'"{ref * fanout}"' if kind == "string" else ", ".join([f'"{ref}"'] * fanout)
            lines.append(f"  l{i}: " + (value if kind == "string" else f"[{value}]"))
    return "version: 1\n" + "\n".join(lines) + "\nsteps: [{do: registry.up}]\n"


@settings(FUZZ, max_examples=60)
@given(
    kind=st.sampled_from(["alias", "string", "list"]),
    fanout=st.integers(1, 12),
    levels=st.integers(1, 14),
)
def test_growing_documents_are_cut_short(scratch, kind, fanout, levels):
    _load_run_config(scratch / "grow.yaml", _growing(kind, fanout, levels).encode())


@settings(FUZZ, max_examples=150)
@given(content=st.binary(max_size=3000), suffix=st.sampled_from([".csv", ".yaml"]))
def test_any_bytes_as_a_device_list(scratch, content, suffix):
    _outcome(devices.load_file, scratch / f"any{suffix}", content)


@settings(FUZZ, max_examples=200)
@given(text=device_text, suffix=st.sampled_from([".csv", ".yaml"]))
def test_device_lists(scratch, text, suffix):
    _outcome(devices.load_file, scratch / f"devices{suffix}", text.encode("utf-8"))


# ------------------------------------------------------------------ with a fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A workspace with three lab-like devices, so that targets resolve for real."""
    return lab_like(init_workspace(tmp_path_factory.mktemp("ws") / "ws"))


@settings(FUZZ, max_examples=40)
@given(text=st.one_of(document.map(yaml.safe_dump), mutated(SEEDS)))
def test_targets_resolve_or_are_refused(scratch, fleet, text):
    _outcome(lambda path: config.load(path, ws=fleet), scratch / "fleet.yaml", text.encode())


def _cli(fleet, *args) -> None:
    proc = evc(*args, env={"EVC_HOME": str(fleet.root)}, timeout=60)
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    if proc.returncode == 2:
        assert str(args[-1]) in proc.stderr


# Each example starts an evc process: seconds on a loaded machine, so no deadline here.
@settings(FUZZ, max_examples=4, deadline=None)
@given(text=st.one_of(mutated(SEEDS), soup))
def test_run_validate_cli(scratch, fleet, text):
    path = scratch / "cli.yaml"
    path.write_text(text)
    _cli(fleet, "run", "validate", "--json", path)


@settings(FUZZ, max_examples=4, deadline=None)
@given(text=device_text, suffix=st.sampled_from([".csv", ".yaml"]))
def test_device_import_cli(scratch, fleet, text, suffix):
    """Only lists the loader refuses: a valid one would be enrolled over SSH."""
    path = scratch / f"cli{suffix}"
    assume(_outcome(devices.load_file, path, text.encode()) is None)
    _cli(fleet, "device", "import", path)
