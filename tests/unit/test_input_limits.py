"""Hostile run-configs and device lists: bounded in size, memory and time, and refused
with a located message and exit 2, never a crash (issue 14, point 5).

Each attack runs through the real CLI with a timeout, so that a regression fails
instead of hanging the suite or eating the machine's memory; the limits themselves
are checked in-process, at their edges. The malformed run-configs that are small
enough to keep as files are in scenario_bad/ (alias-bomb.yaml, var-bomb.yaml, ...).
"""

import time
import tracemalloc
from pathlib import Path

import pytest

from evc import db as evcdb
from evc import devices
from evc.errors import UsageError
from evc.problems import MAX_PROBLEMS
from evc.run import config
from evc.run.variables import MAX_TOTAL, MAX_VALUE
from tests.conftest import evc
from tests.unit.test_scenario import write

BAD = Path(__file__).parent / "scenario_bad"
STEPS = "steps:\n  - do: registry.up\n"
DEEP = 10_000


def _refused(*args, fragment: str) -> str:
    """Run evc; it must exit 2 within seconds with ``fragment`` and no traceback."""
    started = time.monotonic()
    proc = evc(*args, check=2, timeout=60)
    assert time.monotonic() - started < 30, "bounded input took too long"
    assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    return proc.stderr


def _problem(path: Path) -> str:
    """What config.load refuses ``path`` with (in-process: no CLI start-up)."""
    with pytest.raises(UsageError) as exc:
        config.load(path)
    return str(exc.value)


# ------------------------------------------------------------------ run-configs


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        (
            "long-line.yaml",
            "version: 1\ndescription: " + "a" * 10_000_000 + "\n" + STEPS,
            ":1:1: the file is 10,000,052 bytes; at most 1,048,576 (1 MiB) are read",
        ),
        (
            "deep-flow.yaml",
            "version: 1\n" + STEPS + "x-deep: " + "[" * DEEP + "]" * DEEP + "\n",
            ":4:72: nested more than 64 levels deep, the limit",
        ),
        (
            "deep-map.yaml",
            "version: 1\n" + STEPS + "x-deep: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n",
            ":4:258: nested more than 64 levels deep, the limit",
        ),
        (
            "deep-block.yaml",
            "version: 1\n" + STEPS + "x-deep:\n" + "- " * DEEP + "x\n",
            ":5:127: nested more than 64 levels deep, the limit",
        ),
        (
            # ten times as many levels of nine: 9**10 values, for 575 bytes
            "alias-bomb-9.yaml",
            "version: 1\n"
            + STEPS
            + "x-a0: &a0 [lol]\n"
            + "".join(f"x-a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 11))
            + "vars: {bomb: *a10}\n",
            "alias *a4 repeats 13,942 values",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v.endswith(".yaml") else "",
)
def test_hostile_run_config_is_refused_fast_and_located(tmp_path, name, content, fragment):
    path = write(tmp_path, content, name)
    assert f"{path}:" in _refused("run", "validate", path, fragment=fragment)


def test_a_utf8_bom_is_accepted_and_columns_ignore_it(tmp_path):
    ok = tmp_path / "bom.yaml"
    ok.write_bytes(b"\xef\xbb\xbfversion: 1\n" + STEPS.encode())
    assert evc("run", "validate", ok, check=0, timeout=60).returncode == 0
    bad = tmp_path / "bom-bad.yaml"
    bad.write_bytes(b"\xef\xbb\xbfversoin: 1\n" + STEPS.encode())
    assert f"{bad}:1:1: versoin: unknown key 'versoin'" in _problem(bad)


@pytest.mark.parametrize(
    "content, where",
    [
        (b"version: 1\ndescription: \xc3\xa9t\xc3\xa9 \xff\n", ":2:18: byte 0xFF is not UTF-8"),
        (b"a: 1\r\nb: \xe2\x82", ":2:4: byte 0xE2 is not UTF-8 (unexpected end of data)"),
        (b"a: 1\rb: '\x07'\n", ":2:5: character U+0007 is not allowed"),
        (b"a: \xef\xbf\xbe\n", ":1:4: character U+FFFE is not allowed"),
        (b"\xff\xfev\x00\n\x00", ":1:1: byte 0xFF is not UTF-8"),  # UTF-16
    ],
)
def test_bad_text_is_located_at_its_first_bad_character(tmp_path, content, where):
    path = tmp_path / "t.yaml"
    path.write_bytes(content)
    assert f"{path}{where}" in _problem(path)


def test_an_alias_bomb_stays_small_in_memory():
    tracemalloc.start()
    try:
        for name in ("alias-bomb.yaml", "var-bomb.yaml"):
            _problem(BAD / name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak:,} bytes"


def test_aliases_are_fine_up_to_the_limit(tmp_path):
    # a4 is 13,942 values, a0 to a4 15,684: six more stay under 100,000, seven do not
    text = "version: 1\nx-a0: &a0 [lol]\n"
    text += "".join(f"x-a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 5))
    s = config.load(write(tmp_path, text + f"vars: {{v: [{', '.join(['*a4'] * 6)}]}}\n" + STEPS))
    assert len(s.vars["v"]) == 6 and s.vars["v"][5][8][8][8][8] == ["lol"]
    seven = f"vars: {{v: [{', '.join(['*a4'] * 7)}]}}\n"
    assert ":7:42: alias *a4 repeats 13,942 values" in _problem(
        write(tmp_path, text + seven + STEPS)
    )


def test_aliases_that_repeat_long_text_are_bounded(tmp_path):
    text = f"version: 1\nx-big: &big {'x' * 500_000}\nvars: {{v: [{', '.join(['*big'] * 8)}]}}\n"
    message = _problem(write(tmp_path, text + STEPS))
    assert ":3:54: alias *big repeats 1 value (500,000 characters)" in message
    assert "more than 4,194,304 characters, the limit" in message


def test_an_alias_may_not_nest_past_the_depth_limit(tmp_path):
    chain = "".join(f"x-a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 70))
    message = _problem(write(tmp_path, "version: 1\nx-a0: &a0 [1]\n" + chain + STEPS))
    assert ":64:14: alias *a61 holds 63 levels; nested here it is more than 64" in message


def test_a_var_value_is_bounded_and_so_is_all_substitution(tmp_path):
    exact = "x" * (MAX_VALUE - 2)
    ok = f'version: 1\nvars: {{a: "{exact}", b: "<${{a}}>"}}\n' + STEPS
    assert config.load(write(tmp_path, ok)).vars["b"] == f"<{exact}>"
    over = ok.replace("<${a}>", "<${a}>!")
    assert "vars.b: ${a} makes this value longer than 65,536 characters" in _problem(
        write(tmp_path, over)
    )
    uses = MAX_TOTAL // (MAX_VALUE - 2) + 1
    refs = ", ".join(['"${a}"'] * uses)
    many = f'version: 1\nvars: {{a: "{exact}"}}\ndescription: [{refs}]\n'
    message = _problem(write(tmp_path, many + STEPS))
    assert "${a}: substituting variables makes more than 4,194,304 characters in all" in message


def test_variables_that_repeat_a_list_grow_no_further_than_the_limit(tmp_path):
    text = "version: 1\nvars:\n" + "".join(
        f"  v{i}: ['${{v{i + 1}}}', '${{v{i + 1}}}', '${{v{i + 1}}}', '${{v{i + 1}}}']\n"
        for i in range(30)
    )
    text += "  v30: [" + ", ".join(["x" * 100] * 50) + "]\n" + STEPS
    started = time.monotonic()
    assert "substituting variables makes more than 4,194,304 characters" in _problem(
        write(tmp_path, text)
    )
    assert time.monotonic() - started < 10


def test_a_variable_may_not_nest_data_past_the_depth_limit(tmp_path):
    deep = "[" * 40 + "1" + "]" * 40
    text = f"version: 1\nvars: {{d: {deep}, e: '${{d}}'}}\n"
    text += "description: " + "[" * 30 + "'${d}'" + "]" * 30 + "\n" + STEPS
    assert "${d} nests more than 64 levels deep here" in _problem(write(tmp_path, text))


def test_problems_stop_at_a_hundred_and_name_few_variables(tmp_path):
    names = "".join(f"  v{i}: 1\n" for i in range(50))
    refs = "".join(f"  - ${{u{i}}}\n" for i in range(150))
    message = _problem(write(tmp_path, f"version: 1\nvars:\n{names}description:\n{refs}" + STEPS))
    assert f"({MAX_PROBLEMS} problems, checking stopped there; nothing was run)" in message
    assert "Defined in vars: v0, v1, " in message and "v19, ... (50 in all)." in message


def test_an_unusable_path_is_a_problem_not_a_crash(tmp_path):
    text = "version: 1\nsteps:\n  - do: infer.run\n    target: all\n"
    text += f"    with: {{model: 'm:1', data: {'d' * 300}}}\n"
    assert "data: " + "d" * 80 + ": not a usable path (File name too long)" in _problem(
        write(tmp_path, text)
    )


# ------------------------------------------------------------------ device lists


def _csv(rows: int, extra: str = "") -> str:
    return "name,host\n" + "".join(f"d{i},10.0.0.{i}\n" for i in range(1, rows + 1)) + extra


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("nul.csv", _csv(2, "d9,10.0.0.9\x00\n").encode(), ".csv:4:12: character U+0000"),
        ("latin1.csv", _csv(1, "caf\xe9,10.0.0.9\n").encode("latin-1"), ".csv:3:4: byte 0xE9"),
        ("field.csv", _csv(1, f'"{"x" * 200_000}",10.0.0.9\n').encode(), ": row 3: not valid CSV"),
        ("many.csv", _csv(2, "d9,10.0.0.9,22\n").encode(), ": row 4: 3 fields, but the header"),
        ("few.csv", _csv(2, "d9\n").encode(), ": row 4: 1 fields, but the header has 2"),
        ("header.csv", b"name,host,host\nd1,10.0.0.1,x\n", ": row 1: the header names 'host'"),
        ("big.csv", _csv(1, "#" * 10_000_000).encode(), ".csv:1:1: the file is 10,000,"),
        (
            "bomb.yaml",
            (
                "a0: &a0 [lol]\n"
                + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))
                + "devices: *a9\n"
            ).encode(),
            ".yaml:6:40: alias *a4 repeats 13,942 values",
        ),
        ("deep.yaml", ("[" * DEEP + "]" * DEEP).encode(), ".yaml:1:65: nested more than 64"),
        ("key.yaml", b"- {name: a, host: 10.0.0.1, 7: x}\n", ".yaml:1:3: entry 1 (name 'a')"),
        ("date.yaml", b"- {name: a, host: 2023-13-45}\n", ".yaml:1:19: not valid YAML: '2023"),
    ],
    ids=lambda v: v if isinstance(v, str) and "." in v[-5:] else "",
)
def test_hostile_device_list_is_refused_fast_and_located(
    workspace, tmp_path, name, content, fragment
):
    path = tmp_path / name
    path.write_bytes(content)
    assert f"{path}" in _refused("device", "import", path, fragment=fragment)
    assert evcdb.workspace_db(workspace)["devices"].count == 0


def test_device_csv_keeps_blank_lines_quotes_and_a_bom(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b'\xef\xbb\xbfname, host ,labels\n\n"a",10.0.0.1,"site=x;rack=2"\n')
    (d,) = devices.load_file(path)
    assert (d.name, d.host, d.labels) == ("a", "10.0.0.1", {"site": "x", "rack": "2"})


def test_device_yaml_names_the_entry_by_line(tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("devices:\n  - {name: a, host: 10.0.0.1}\n  - [b]\n")
    with pytest.raises(UsageError, match=rf"^{path}:3:5: entry 2: expected a mapping"):
        devices.load_file(path)
    path.write_text("- {name: a, host: 10.0.0.1}\n- {name: a, name: b}\n")
    with pytest.raises(UsageError, match=r":2:13: key 'name' appears twice"):
        devices.load_file(path)
