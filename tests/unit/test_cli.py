"""The CLI's bad-input paths: clear message, exit code, no traceback, nothing created."""

from tests.conftest import evc


def _no_traceback(proc):
    assert "Traceback" not in proc.stderr + proc.stdout


def test_help_lists_commands():
    proc = evc("--help", check=0)
    for word in ("init", "lab"):
        assert word in proc.stdout
    assert "up" in evc("lab", "--help", check=0).stdout


def test_version():
    assert evc("--version", check=0).stdout.startswith("evc ")


def test_lab_up_zero_nodes_is_a_usage_error(workspace):
    proc = evc("lab", "up", "--nodes", "0", check=2)
    assert "--nodes 0 is out of range" in proc.stderr
    _no_traceback(proc)


def test_lab_up_unknown_profile(workspace):
    proc = evc("lab", "up", "--profile", "cray", check=2)
    assert "Unknown profile 'cray'" in proc.stderr
    _no_traceback(proc)


def test_no_workspace(tmp_path):
    proc = evc("lab", "status", env={"EVC_HOME": str(tmp_path / "none")}, check=2)
    assert "evc init" in proc.stderr
    _no_traceback(proc)


def test_no_docker_engine_is_an_environment_error(workspace):
    proc = evc("lab", "status", env={"DOCKER_HOST": "unix:///nonexistent.sock"}, check=1)
    assert "No Docker engine answers" in proc.stderr
    _no_traceback(proc)


def test_init_creates_workspace(tmp_path):
    proc = evc("init", tmp_path / "w", "--name", "edge", check=0)
    assert "edge" in proc.stdout
    assert (tmp_path / "w" / "evc.yaml").is_file()


def test_rotate_new_ca_bad_input_changes_nothing(workspace):
    evc("registry", "init", "--host", "10.0.0.1", check=0)
    registry = workspace.private_dir / "registry"
    before = {p.name: p.read_bytes() for p in registry.iterdir()}
    days = evc("registry", "rotate", "--new-ca", "--days", "0", check=2)
    assert "--days 0: a server certificate lasts 1 to 3650 days" in days.stderr
    nodes = evc("registry", "rotate", "--new-ca", check=2)  # no device enrolled yet
    assert "No inventory at" in nodes.stderr
    for proc in (days, nodes):
        _no_traceback(proc)
    assert {p.name: p.read_bytes() for p in registry.iterdir()} == before


def test_ctrl_c_says_interrupted_and_exits_130(tmp_path, monkeypatch, capsys):
    import sys

    import pytest

    import evc.config
    from evc.cli import main

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(evc.config, "init_workspace", interrupted)  # Ctrl-C mid-command
    monkeypatch.setattr(sys, "argv", ["evc", "init", str(tmp_path / "ws")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == "error: interrupted"


def test_targets_are_positional_and_never_a_template_or_a_file(workspace):
    """Every fleet command takes TARGET as an argument (the old --target still parses);
    a pattern with braces or a leading '@' (Ansible's --limit @FILE) is refused with exit 2
    before anything runs."""
    for args in (
        ["device", "ping", "{{ lookup('pipe', 'id') }}"],
        ["cert", "check", "@/etc/passwd"],
        ["logs", "collect", "node1{%raw%}"],
        ["model", "deploy", "m:1", "@hosts.txt"],
        ["infer", "run", "m:1", "--target", "{{x}}", "--data", "."],
        ["infer", "resume", "20260101-000000-abcd", "@f"],
        ["monitor", "--target", "{{x}}", "--rounds", "1"],
    ):
        proc = evc(*args, check=2)
        assert "is not an Ansible host pattern" in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_grafana_password_before_up_says_how_to_get_one(workspace):
    proc = evc("grafana", "password", check=2)
    assert "No Grafana admin password yet: `evc grafana up` creates one" in proc.stderr
    _no_traceback(proc)


def test_a_docker_failure_is_an_evc_error_not_an_internal_one(monkeypatch):
    """An engine error that escapes the code around it exits 1 in the engine's own words."""
    import docker.errors

    from evc.engine import as_evc_error

    err = as_evc_error(docker.errors.APIError("boom", explanation="no space left on device"))
    assert err is not None and err.exit_code == 1
    assert "no space left on device" in str(err)
    assert as_evc_error(ValueError("x")) is None


def _tour() -> list[str]:
    """Every `evc ...` usage line in the README's tour (indented code), continuation lines
    joined."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("    evc "):
            full = line.strip()
            j = i + 1
            while j < len(lines) and lines[j].startswith("      ") and lines[j].strip()[:1] in "[-":
                full += " " + lines[j].strip()
                j += 1
            out.append(full.split("  #")[0].strip())
    return out


def test_every_command_of_the_readme_tour_exists_with_its_options():
    import re

    import typer.main

    from evc.cli import app

    root = typer.main.get_command(app)
    shown = _tour()
    assert len(shown) > 40
    for usage in shown:
        words = usage.split()[1:]
        command = root
        while words and hasattr(command, "get_command") and command.get_command(None, words[0]):
            command = command.get_command(None, words.pop(0))  # groups build their commands lazily
        if getattr(command, "name", "") == "run" and hasattr(command, "get_command"):
            command = command.get_command(None, "start")  # `evc run FILE` is `evc run start FILE`
        assert not hasattr(command, "get_command"), usage
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-zA-Z])\b", " ".join(words)):
            assert option in known, f"{usage}: {option} is not an option of {command.name}"
