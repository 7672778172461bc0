"""No template injection: a value that runs a command on the controller if Ansible
ever renders it, planted in every field a user, a run-config or a data set controls
that can reach a playbook. Each is refused (exit 2, naming the field) or used
literally, and the marker file never appears."""

import json
from pathlib import Path

import pytest

from evc.ansible import run_playbook
from tests.conftest import evc
from tests.lab.conftest import evc_json

LABELS = Path(__file__).parent / "playbooks" / "labels.yml"


@pytest.fixture(scope="module")
def marker(tmp_path_factory):
    path = tmp_path_factory.mktemp("injection") / "marker"
    yield path
    assert not path.exists(), "a planted template ran on the controller"


@pytest.fixture(autouse=True)
def no_marker(marker):
    yield
    assert not marker.exists(), "a planted template ran on the controller"


@pytest.fixture(scope="module")
def payload(marker):
    return "{{ lookup('pipe', 'touch " + str(marker) + "') }}"


# A file name holds no '/': this one touches the marker named by the environment, which
# ansible-playbook inherits from the evc process.
FILE_PAYLOAD = "{{ lookup('pipe', 'touch \"$EVC_TEST_MARK\"') }}"


@pytest.fixture(scope="module")
def env(lab_session, marker):
    return {"EVC_HOME": str(lab_session[0].root), "EVC_TEST_MARK": str(marker)}


def _host(ws, node: str) -> str:
    return evc_json("device", "show", node, env={"EVC_HOME": str(ws.root)})["host"]


def test_every_checked_field_refuses_a_template(lab_ws, env, payload, tmp_path):
    ip = _host(lab_ws, "node1")
    (tmp_path / "w").mkdir()
    weights = tmp_path / "w" / f"{FILE_PAYLOAD}.onnx"
    weights.write_bytes(b"not onnx")
    p = payload
    cases = [
        (["device", "add", p, "--host", ip], "NAME"),
        (["device", "add", "tpl1", "--host", p], "--host"),
        (["device", "add", "tpl1", "--host", ip, "--user", p], "--user"),
        (["device", "add", "tpl1", "--host", ip, "-g", p], "--group"),
        (["device", "add", "tpl1", "--host", ip, "-l", f"{p}=v"], "label key"),
        (["model", "build", p, "-r", "face-haar", "-v", "1"], "NAME"),
        (["model", "build", "tplm", "-r", "face-haar", "-v", p], "--version"),
        (["model", "build", "tplm", "-r", "yolo-onnx", "-v", "1", "--weights", weights],
         "weights file"),
        (["model", "deploy", "tplo:1", "node1", "--memory", p], "--memory"),
        (["model", "deploy", "tplo:1", "node1", "--serial", p], "--serial"),
        (["model", "deploy", f"tplo:{p}", "node1"], "REF"),
        (["model", "deploy", "tplo:1", p], "TARGET"),
        (["model", "undeploy", p, "node1"], "NAME"),
        (["model", "rollback", p, "node1"], "NAME"),
        (["infer", "run", p, "--data", tmp_path], "MODEL"),
        (["device", "ping", p], "TARGET"),
        (["logs", "collect", p], "TARGET"),
    ]  # fmt: skip
    for args, field in cases:
        proc = evc(*args, env=env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert field in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert "tpl1" not in lab_ws.inventory.read_text()


def test_a_label_value_is_stored_and_used_as_text(lab_ws, env, payload):
    """Free text (a label value) is kept as it is: in the devices table, in hosts.yml
    (marked unsafe), and a play over that host reads it as text."""
    evc("device", "add", "tplabel", "--host", _host(lab_ws, "node1"), "-l", f"site={payload}",
        env=env, check=0)  # fmt: skip
    try:
        assert evc_json("device", "show", "tplabel", env=env)["labels"] == {"site": payload}
        hosts = json.loads(lab_ws.inventory.read_text())["all"]["hosts"]
        assert hosts["tplabel"]["evc_labels"] == {"site": {"__ansible_unsafe": payload}}
        run = run_playbook(lab_ws, str(LABELS), "tplabel")
        assert run.ok, run.hosts["tplabel"].message
        assert run.hosts["tplabel"].outputs["echo on the node"]["stdout"] == payload
        evc("device", "ping", "tplabel", env=env, check=0)
    finally:
        evc("device", "remove", "tplabel", env=env, check=0)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """An ordinary picture and one whose file name is a template."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("pictures")
    for name in ("astronaut.jpg", f"{FILE_PAYLOAD}.jpg"):
        Image.fromarray(data.astronaut()).save(root / name)
    return root


@pytest.fixture(scope="module")
def owned(trusted, env, payload):
    """tplo:1, built with a template as its owner, pushed and running on node1."""
    evc("model", "build", "tplo", "-r", "face-haar", "-v", "1", "--owner", payload, "--force",
        env=env, check=0, timeout=900)  # fmt: skip
    evc("model", "push", "tplo:1", env=env, check=0, timeout=900)
    yield
    evc("model", "undeploy", "tplo", "all", env=env)
    for version in ("1", "2"):
        evc("model", "delete", f"tplo:{version}", "--force", env=env)


def _items(env, job_id: str) -> dict[str, str]:
    return {r["item"]: r["state"] for r in evc_json("infer", "results", job_id, env=env)}


def test_owner_and_data_set_names_are_text_through_the_cli(lab_ws, env, payload, owned, pictures):
    assert evc_json("model", "show", "tplo:1", env=env)["owner"] == payload
    deployed = evc_json("model", "deploy", "tplo:1", "node1", "--memory", "256m", env=env)
    assert deployed["ok"], deployed
    job = evc_json("infer", "run", "tplo:1", "node1", "--data", pictures, env=env)
    assert job["state"] == "complete", job
    assert _items(env, job["id"]) == {"astronaut.jpg": "ok", f"{FILE_PAYLOAD}.jpg": "ok"}


def test_run_config_values_are_refused_or_text(lab_ws, env, payload, owned, pictures, tmp_path):
    # Checked fields: the whole file is refused before anything runs, every place named.
    bad = {
        "version": 1,
        "vars": {"bad": payload},
        "devices": [{"name": "${bad}", "host": _host(lab_ws, "node2")}],
        "steps": [
            {"do": "model.undeploy", "target": "node1", "with": {"name": "${bad}"}},
            {"do": "model.deploy", "target": "${bad}", "with": {"ref": "tplo:1"}},
            {
                "do": "model.deploy",
                "target": "node1",
                "with": {"ref": "tplo:1", "memory": "${bad}"},
            },
            {"do": "infer.run", "target": "node1", "with": {"model": "tplo:1", "data": "${bad}"}},
        ],
    }
    (tmp_path / "bad.yaml").write_text(json.dumps(bad))
    proc = evc("run", tmp_path / "bad.yaml", env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    for where in ("devices", "name", "target", "memory", "data"):
        assert where in proc.stderr, (where, proc.stderr)
    assert "${bad}" not in lab_ws.inventory.read_text()

    # Free text from vars and step options is stored and used as it is.
    good = {
        "version": 1,
        "vars": {"owner": payload, "note": payload},
        "devices": [
            {"name": "tprun", "host": _host(lab_ws, "node2"), "labels": {"note": "${note}"}}
        ],
        "steps": [
            {"do": "model.build", "with": {"name": "tplo", "runtime": "face-haar",
                                           "version": "2", "owner": "${owner}", "force": True}},
            {"do": "model.push", "with": {"ref": "tplo:2"}},
            {"do": "model.deploy", "target": "tprun",
             "with": {"ref": "tplo:2", "memory": "256m"}},
            {"name": "infer", "do": "infer.run", "target": "tprun",
             "with": {"model": "tplo:2", "data": str(pictures)}},
            {"do": "device.check", "target": "tprun"},
        ],
    }  # fmt: skip
    (tmp_path / "good.yaml").write_text(json.dumps(good))
    try:
        proc = evc("run", tmp_path / "good.yaml", "--var", f"owner={payload}", "--json",
                   env=env, timeout=900)  # fmt: skip
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert evc_json("device", "show", "tprun", env=env)["labels"] == {"note": payload}
        assert evc_json("model", "show", "tplo:2", env=env)["owner"] == payload
        steps = {s["name"]: s for s in json.loads(proc.stdout)["steps"]}
        job_id = steps["infer"]["detail"]["id"]
        assert _items(env, job_id) == {"astronaut.jpg": "ok", f"{FILE_PAYLOAD}.jpg": "ok"}
    finally:
        evc("model", "undeploy", "tplo", "tprun", env=env)
        evc("device", "remove", "tprun", env=env)
