"""Model image building: names, platform tags and the bad-input paths that stop before Docker."""

from pathlib import Path

import pytest

from evc import resources
from evc.errors import UsageError
from evc.model import build, catalogue, runtimes
from evc.queue import streams
from tests.conftest import evc


@pytest.mark.parametrize(
    "ref,expected",
    [("faces:1.0", ("faces", "1.0")), ("yolo-v8.n:2026_11-rc1", ("yolo-v8.n", "2026_11-rc1"))],
)
def test_parse_ref(ref, expected):
    assert catalogue.parse_ref(ref) == expected


@pytest.mark.parametrize("ref", ["faces", "Faces:1", "faces:", ":1", "faces:1:2", "a b:1"])
def test_parse_ref_rejects(ref):
    with pytest.raises(UsageError, match=r"model reference: .* is not"):
        catalogue.parse_ref(ref)


def test_platform_tags_cover_older_glibc_only():
    args = runtimes._platform_args("amd64", "2.36")
    tags = args[1::2]
    assert "manylinux_2_17_x86_64" in tags and "manylinux_2_36_x86_64" in tags
    assert "manylinux_2_37_x86_64" not in tags and "manylinux2014_x86_64" in tags
    assert all(t.endswith("aarch64") for t in runtimes._platform_args("arm64", "2.31")[1::2])


def test_runtimes_are_listed_with_their_specs():
    assert {"yolo-onnx", "face-haar", "ultralytics"} <= set(runtimes.available_runtimes())
    rt = runtimes.Runtime.load("yolo-onnx")
    assert rt.weights["required"] and ".onnx" in rt.weights["formats"]
    assert "onnxruntime" in " ".join(rt.requirements)
    assert not any(r.startswith(("torch", "opencv")) for r in rt.requirements)


@pytest.mark.parametrize(
    ("runtime", "dockerfile"),
    [("face-haar", "common/Dockerfile"), ("yolo-onnx", "common/Dockerfile"),
     ("ultralytics", "ultralytics/Dockerfile")],
)  # fmt: skip
def test_build_context_takes_the_runtimes_own_dockerfile_else_the_shared_one_all_readable(
    tmp_path, runtime, dockerfile
):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "pip-24.0-py3-none-any.whl").write_bytes(b"wheel")
    root = tmp_path / "context"
    (root / "model").mkdir(parents=True)
    weights = root / "model" / "weights.bin"
    weights.write_bytes(b"private")
    weights.chmod(0o600)  # as a user's file may be: COPY keeps it, the image's user needs it
    rt = runtimes.Runtime.load(runtime)
    build._context(rt, rt.requirements, wheels, root)
    assert weights.stat().st_mode & 0o777 == 0o644
    images = resources.data_dir("model_images")
    assert (root / "Dockerfile").read_bytes() == (images / dockerfile).read_bytes()
    assert (root / "runtime" / "runtime.py").is_file() and (root / "model.yaml").is_file()
    assert (root / "evc_infer" / "serve.py").is_file()
    shipped = (root / "evc_infer" / "streams.py").read_bytes()  # the puller's protocol
    assert shipped == Path(streams.__file__).read_bytes()
    assert [p.name for p in (root / "wheels").iterdir()] == ["pip-24.0-py3-none-any.whl"]


def _build(*args, check=2):
    proc = evc("model", "build", *args, check=check)
    assert "Traceback" not in proc.stderr + proc.stdout
    return proc.stderr


def test_unknown_runtime(workspace):
    err = _build("m", "--runtime", "keras", "--version", "1")
    assert "unknown runtime 'keras'" in err and "face-haar" in err


def test_missing_weights_file(workspace, tmp_path):
    err = _build("m", "--runtime", "yolo-onnx", "--version", "1", "--weights", tmp_path / "x.onnx")
    assert "x.onnx does not exist" in err


def test_weights_required(workspace):
    assert "needs --weights" in _build("m", "--runtime", "yolo-onnx", "--version", "1")


def test_weights_of_the_wrong_kind(workspace, tmp_path):
    bad = tmp_path / "model.h5"
    bad.write_bytes(b"\x89HDF")
    err = _build("m", "--runtime", "yolo-onnx", "--version", "1", "--weights", bad)
    assert "is a .h5" in err and ".onnx" in err


def test_onnx_that_is_not_a_model(workspace, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("this is not a protobuf")
    err = _build("m", "--runtime", "yolo-onnx", "--version", "1", "--weights", bad)
    assert "is not an ONNX model" in err


def test_pt_that_is_not_a_model(workspace, tmp_path):
    evc("registry", "init", "--host", "10.0.0.1", check=0)  # files only, no container
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    err = _build("m", "--runtime", "yolo-onnx", "--version", "1", "--weights", bad)
    assert "model.pt" in err and "not a YOLO model" in err


def test_builtin_runtime_takes_no_weights(workspace, tmp_path):
    w = tmp_path / "w.onnx"
    w.write_bytes(b"x")
    err = _build("m", "--runtime", "face-haar", "--version", "1", "--weights", w)
    assert "takes no --weights" in err


def test_bad_name_and_task_and_arch(workspace):
    assert "'Bad/Name' is not a model name" in _build(
        "Bad/Name", "--runtime", "face-haar", "--version", "1"
    )
    err = _build("m", "--runtime", "face-haar", "--version", "1", "--task", "classify")
    assert "does 'detect', not 'classify'" in err
    err = _build("m", "--runtime", "face-haar", "--version", "1", "--arch", "s390")
    assert "is not a list of arches" in err


def test_build_needs_a_registry(workspace):
    assert "evc registry init" in _build("m", "--runtime", "face-haar", "--version", "1")


def test_unknown_model(workspace):
    for cmd in ("push", "show", "delete"):
        proc = evc("model", cmd, "ghost:1", check=2)
        assert "no model ghost:1 in the catalogue" in proc.stderr
    assert "REF: 'ghost' is not NAME:VERSION" in evc("model", "push", "ghost", check=2).stderr


def test_a_bare_yolo_config_name_is_the_one_ultralytics_ships(tmp_path, monkeypatch):
    pytest.importorskip("ultralytics")
    found = runtimes.builtin_config(Path("yolov8n.yaml"))
    assert found is not None and found.name == "yolov8.yaml"  # scale n of yolov8.yaml
    assert runtimes.builtin_config(Path("yolo11s.yaml")).name == "yolo11.yaml"
    assert runtimes.builtin_config(Path("nonesuch8n.yaml")) is None
    assert runtimes.builtin_config(tmp_path / "yolov8n.yaml") is None  # a path is a path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "yolov8n.yaml").write_text("nc: 1\n")
    assert runtimes.builtin_config(Path("yolov8n.yaml")) is None  # a file here wins


def _malicious_pt(path: Path, marker: Path) -> Path:
    """A torch checkpoint whose unpickling runs `touch MARKER` (what a hostile .pt does)."""
    import pickle

    class Payload:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"model": Payload()}))
    return path


def test_someone_elses_pickle_is_not_loaded_without_trust_weights(workspace, tmp_path):
    """A .pt is unpickled to export it: one that is not the user's own file (another owner,
    or writable by others) is refused, so its code never runs on the controller."""
    import os

    evc("registry", "init", "--host", "10.0.0.1", check=0)  # files only, no container
    marker = tmp_path / "PWNED"
    theirs = _malicious_pt(tmp_path / "theirs.pt", marker)
    os.chown(theirs, 65534, 65534)
    err = _build("m", "--runtime", "yolo-onnx", "--version", "1", "--weights", theirs)
    assert "is a pickle" in err and "belongs to uid 65534" in err and "--trust-weights" in err
    shared = _malicious_pt(tmp_path / "shared.pt", marker)
    shared.chmod(0o666)
    assert "others can write to it" in _build(
        "m", "--runtime", "yolo-onnx", "--version", "1", "--weights", shared
    )
    run_cfg = tmp_path / "r.yaml"
    run_cfg.write_text(
        "version: 1\nsteps:\n  - do: model.build\n"
        f"    with: {{name: m, runtime: yolo-onnx, version: '1', weights: {theirs}}}\n"
    )
    ran = evc("run", run_cfg, check=1)  # a run-config cannot trust it for the operator
    assert "--trust-weights" in ran.stdout + ran.stderr
    assert not marker.exists()
