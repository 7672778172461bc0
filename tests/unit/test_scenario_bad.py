"""Malformed run-configs through the real CLI: a located message, exit 2, nothing changed.

Each file in scenario_bad/ has its expected line and message fragment below; the
workspace has three lab-like devices (no SSH), so targets resolve for real.
"""

from pathlib import Path

import pytest

from evc import db as evcdb
from tests.conftest import evc
from tests.unit.test_scenario import lab_like

BAD = Path(__file__).parent / "scenario_bad"

# file: (line, fragment of the message)
EXPECTED = {
    "alias-bomb.yaml": (8, "alias *a4 repeats 13,942 values (19,683 characters): with aliases"),
    "alias-loop.yaml": (2, "alias *a is used inside its own anchor (a loop)"),
    "bad-anchor.yaml": (5, "found undefined alias 'commn'"),
    "bad-device.yaml": (4, "devices[1].name: 'bad name' is not a device name: letters, digits"),
    "bad-timestamp.yaml": (2, "'2023-13-45' is not a valid timestamp: month must be in 1..12"),
    "bad-var-name.yaml": (3, "variable name '2fast'"),
    "bad-when.yaml": (5, "steps[0].when: 'n >' is not an expression"),
    "bad-yaml.yaml": (5, "not valid YAML: while parsing a flow sequence"),
    "binary-key.yaml": (3, "a key must be a string, a number, true/false or null, not a binary"),
    "device-add-bad-host.yaml": (4, "with.host: '999.1.1.1' is not an IPv4/IPv6 address"),
    "duplicate-default-names.yaml": (5, "two steps are named 'cert.push'"),
    "duplicate-key.yaml": (5, "key 'name' appears twice (first on line 3)"),
    "duplicate-names.yaml": (5, "two steps are named 'trust'"),
    "empty-steps.yaml": (2, "steps: List should have at least 1 item"),
    "empty.yaml": (1, "the file is empty; expected a mapping with version: 1 and steps:"),
    "env-unset.yaml": (4, "environment variable 'EVC_SURELY_UNSET_9' is not set"),
    "invalid-utf8.yaml": (2, ":2:17: byte 0xE9 is not UTF-8 (invalid continuation byte)"),
    "long-when.yaml": (4, "when: the expression is longer than 1,000 characters, the limit"),
    "missing-data.yaml": (4, "steps[0].with.data: no-such-folder does not exist"),
    "missing-option.yaml": (6, "missing required option 'ref' of model.deploy"),
    "missing-steps.yaml": (1, "missing required key 'steps'"),
    "missing-target.yaml": (4, "model.deploy needs target: an Ansible pattern"),
    "not-a-mapping.yaml": (1, "expected a mapping with version: 1 and steps:, got a list"),
    "nul-byte.yaml": (3, ":3:20: character U+0000 is not allowed"),
    "only-comments.yaml": (1, "the file is empty"),
    "step-not-mapping.yaml": (3, "a step must be a mapping with at least do: KIND"),
    "target-in-with.yaml": (5, "the target is a key of the step itself"),
    "target-bad-pattern.yaml": (4, "Target 'lab:&' is not a pattern Ansible can use ('!' and"),
    "target-no-host.yaml": (6, "Target 'jetsons' matches no host in the inventory"),
    "target-on-controller-step.yaml": (4, "model.build runs on the controller and takes no target"),
    "undefined-var.yaml": (6, "${vrsion}: undefined variable (did you mean 'version'?)"),
    "unknown-kind.yaml": (4, "unknown step kind 'model.depoly' (did you mean 'model.deploy'?)"),
    "unknown-option.yaml": (7, "unknown option 'serail' of model.deploy (did you mean 'serial'?)"),
    "unknown-step-key.yaml": (4, "unknown key 'tagret' (did you mean 'target'?)"),
    "unknown-top-key.yaml": (2, "unknown key 'step' (did you mean 'steps'?)"),
    "unquoted-ref-in-flow.yaml": (5, "quote a value that uses ${...}"),
    "unquoted-version.yaml": (4, "valid string (got 1.1); put it in quotes"),
    "unsafe-when.yaml": (4, "is not allowed; use variables, constants"),
    "var-bomb.yaml": (8, "vars.v4: ${v5} makes this value longer than 65,536 characters"),
    "var-chain.yaml": (67, "vars.v63: variables that use variables nest more than 64 levels"),
    "var-cycle.yaml": (3, "variables refer to each other in a loop: a -> b -> a"),
    "wrong-type-bool.yaml": (4, "continue_on_error: Input should be a valid boolean"),
    "wrong-type.yaml": (7, "max_fail_percent: Input should be a valid integer"),
    "wrong-version.yaml": (1, "version 2 is not supported; this EVC reads version 1"),
}


@pytest.fixture
def fleet(workspace):
    return lab_like(workspace)


def _state(ws):
    """Row counts of every table but the audit log (and its id counter); the inventory."""
    db = evcdb.workspace_db(ws)
    skip = ("audit_log", "sqlite_sequence")
    counts = {t: db[t].count for t in db.table_names() if t not in skip}
    inv = ws.inventory
    return counts, inv.read_bytes(), inv.stat().st_mtime_ns, db["audit_log"].count


def _refused(ws, args, fragment, line_prefix=None):
    before = _state(ws)
    proc = evc("run", *args, check=2, timeout=60)  # a bomb that regresses fails, not hangs
    assert fragment in proc.stderr, proc.stderr
    if line_prefix:
        assert line_prefix in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    after = _state(ws)
    assert after[:3] == before[:3]  # no table, no inventory touched
    assert after[3] == before[3] + 1  # the refusal itself is audited
    return proc


def test_corpus_is_complete():
    assert sorted(p.name for p in BAD.glob("*.yaml")) == sorted(EXPECTED)
    assert len(EXPECTED) >= 20


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_is_refused_located(fleet, name):
    line, fragment = EXPECTED[name]
    path = BAD / name
    proc = _refused(fleet, [path], fragment, f"{path}:{line}:")
    assert "nothing was run" in proc.stderr


DEMO = BAD.parents[2] / "run_cfg" / "demo.yaml"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["no-such.yaml"], "no-such.yaml: no such file; expected a run-config"),
        ([BAD], "a folder; expected a run-config"),
        ([DEMO, "--var", "oops"], "--var 'oops': expected NAME=VALUE"),
        ([DEMO, "--var", "nodez=lab"], "no such variable (did you mean 'nodes'?)"),
        ([DEMO, "--from", "deploy"], "--from 'deploy': "),
        ([DEMO, "--only", "nope", "--dry-run"], "--only 'nope': "),
        ([DEMO, "--from", "registry", "--only", "registry"], "do not go together"),
    ],
    ids=["missing-file", "folder", "bad-var", "unknown-var", "unknown-from", "unknown-only",
         "from-and-only"],
)  # fmt: skip
def test_bad_command_line_is_refused(fleet, args, fragment):
    _refused(fleet, args, fragment)


def test_validate_reports_the_same_and_every_problem_at_once(fleet, tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text((BAD / "unknown-option.yaml").read_text() + "  - do: cert.pusj\n")
    proc = evc("run", "validate", path, check=2)
    assert f"{path}:7:7: steps[0].with.serail" in proc.stderr
    assert f"{path}:8:5: steps[1].do: unknown step kind 'cert.pusj'" in proc.stderr
    assert "2 problems" in proc.stderr
