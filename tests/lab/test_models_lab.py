"""Model images for real: build face-haar, face-blaze and yolo-onnx, push them, run each on
a lab node."""

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from evc import registry, registry_server
from evc.engine import docker_client, list_images
from evc.lab.nodes import Nodes, exec_read
from tests.conftest import evc
from tests.lab.conftest import evc_json as _json


@pytest.fixture(scope="module")
def images_in(tmp_path_factory):
    """The astronaut (one face), a second picture, a corrupt jpg and a truncated png."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("images")
    Image.fromarray(data.astronaut()).save(root / "astronaut.png")
    Image.fromarray(data.coffee()).save(root / "coffee.jpg")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    good = (root / "astronaut.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 3])
    return root


def pinned(ws, name: str, digest: str) -> str:
    """What a node pulls: the pushed image by digest, from the read-only endpoint."""
    return f"{registry.load(ws).ro_address}/evc/{name}@{digest}"


def run_on_node(ws, node: str, ref: str, folder: Path) -> tuple[list[dict], dict]:
    """Pull ``ref`` on a lab node and run its evc-infer over ``folder``; (results, summary)."""
    container = docker_client().containers.get(Nodes(ws).container_name(node))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname="in")
    container.exec_run(["rm", "-rf", "/tmp/job"])
    container.exec_run(["mkdir", "-p", "/tmp/job/out"])
    assert container.put_archive("/tmp/job", buf.getvalue())
    container.exec_run(["chown", "-R", "10001:10001", "/tmp/job"])  # the images' user
    code, out = container.exec_run(["docker", "pull", "-q", ref])
    assert code == 0, out.decode()
    code, out = container.exec_run(
        ["docker", "run", "--rm", "--network", "none", "-v", "/tmp/job:/job", ref,
         "--input", "/job/in", "--output", "/job/out"]
    )  # fmt: skip
    assert code == 0, out.decode()
    results = exec_read(container, ["cat", "/tmp/job/out/results.jsonl"])[1]
    summary = exec_read(container, ["cat", "/tmp/job/out/summary.json"])[1]
    return [json.loads(line) for line in results.splitlines()], json.loads(summary)


def _check_contract(results, summary, names):
    assert sorted(r["item"] for r in results) == sorted(names)
    for r in results:
        assert isinstance(r["ok"], bool) and isinstance(r["latency_ms"], float | int)
        for d in r["detections"]:
            x, y, w, h = d["box"]
            assert 0 <= x and 0 <= y and x + w <= r["width"] + 0.5 and y + h <= r["height"] + 0.5
            assert 0 <= d["score"] <= 1 and isinstance(d["label"], str)
    bad = {r["item"] for r in results if not r["ok"]}
    assert bad == {"corrupt.jpg", "truncated.png"}
    assert all(r["error"] for r in results if not r["ok"])
    assert summary["count"] == len(names) and summary["failed"] == 2
    assert summary["ok"] == len(names) - 2


def test_face_haar_builds_pushes_and_finds_the_astronaut(lab_ws, lab_env, trusted, images_in):
    built = _json(
        "model", "build", "faces", "--runtime", "face-haar", "--version", "1.0", "--owner", "qa",
        env=lab_env,
    )  # fmt: skip
    address = registry.load(lab_ws).address
    assert built["image"] == f"{address}/evc/faces:1.0-amd64"
    assert built["selftest"]["selftest"] == "ok" and built["selftest"]["detections"] >= 1
    labels = docker_client().images.get(built["image"]).labels
    assert labels["evc.model.name"] == "faces" and labels["evc.model.runtime"] == "face-haar"
    assert labels["evc.model.version"] == "1.0" and labels["evc.model.owner"] == "qa"

    pushed = _json("model", "push", "faces:1.0", env=lab_env)
    assert pushed["registry_digest"].startswith("sha256:") and pushed["pushed_size"] > 10**7
    api = registry.api(lab_ws)
    assert api.manifest_digest("evc/faces", "1.0-amd64") == pushed["registry_digest"]

    ref = pinned(lab_ws, "faces", pushed["registry_digest"])
    results, summary = run_on_node(lab_ws, "node1", ref, images_in)
    _check_contract(results, summary, [p.name for p in images_in.iterdir()])
    (astronaut,) = [r for r in results if r["item"] == "astronaut.png"]
    assert len(astronaut["detections"]) == 1
    x, y, w, h = astronaut["detections"][0]["box"]
    assert abs(x - 177) <= 10 and abs(y - 66) <= 10 and abs(w - 95) <= 10 and abs(h - 95) <= 10
    assert summary["runtime"] == "face-haar" and "opencv" in json.dumps(summary["versions"])


def test_face_blaze_weights_come_from_mediapipe_and_find_the_face_with_keypoints(
    lab_ws, lab_env, trusted, images_in
):
    built = _json(
        "model", "build", "blaze", "--runtime", "face-blaze", "--version", "1.0", env=lab_env,
    )  # fmt: skip
    assert built["selftest"]["selftest"] == "ok" and built["selftest"]["detections"] == 1
    assert built["weights_source"] == "mediapipe==0.10.18"
    labels = docker_client().images.get(built["image"]).labels
    assert labels["evc.model.weights.digest"] == built["weights_digest"]
    assert built["weights_digest"].startswith("sha256:")
    # the base (~250 MB) and ~145 MB of packages: no MediaPipe, no OpenCV (face-haar: ~490 MB)
    assert built["size_bytes"] < 420 * 10**6, built["size_bytes"]
    pushed = _json("model", "push", "blaze:1.0", env=lab_env)

    ref = pinned(lab_ws, "blaze", pushed["registry_digest"])  # nodes pull from the RO endpoint
    results, summary = run_on_node(lab_ws, "node3", ref, images_in)
    _check_contract(results, summary, [p.name for p in images_in.iterdir()])
    found = {r["item"]: r["detections"] for r in results if r["ok"]}
    assert found["coffee.jpg"] == []
    (face,) = found["astronaut.png"]
    x, y, w, h = face["box"]
    assert abs(x - 177) <= 10 and abs(y - 66) <= 10 and abs(w / 95 - 1) <= 0.15, face
    names = [p["name"] for p in face["keypoints"]]
    assert names == ["right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear"]
    assert all(x <= p["x"] <= x + w and y <= p["y"] <= y + h for p in face["keypoints"])
    assert summary["runtime"] == "face-blaze" and "ai_edge_litert" in summary["versions"]
    _json("model", "delete", "blaze:1.0", env=lab_env)


def test_yolo_onnx_from_a_yaml_model(lab_ws, lab_env, trusted, images_in, tmp_path):
    import ultralytics

    cfg = Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / "yolov8.yaml"
    weights = tmp_path / "yolov8n.yaml"  # the scale letter in the name picks the n model
    shutil.copy(cfg, weights)
    built = _json(
        "model", "build", "yolo", "--runtime", "yolo-onnx", "--version", "0.1",
        "--weights", weights, env=lab_env,
    )  # fmt: skip
    assert built["weights_source"] == "yolov8n.yaml"
    assert built["weights_digest"].startswith("sha256:")
    pushed = _json("model", "push", "yolo:0.1", env=lab_env)

    ref = pinned(lab_ws, "yolo", pushed["registry_digest"])
    results, summary = run_on_node(lab_ws, "node2", ref, images_in)
    _check_contract(results, summary, [p.name for p in images_in.iterdir()])
    assert "onnxruntime" in summary["versions"]
    assert built["size_bytes"] < 600 * 10**6, built["size_bytes"]  # no torch in it

    again = evc("model", "build", "yolo", "--runtime", "yolo-onnx", "--version", "0.1",
                "--weights", weights, env=lab_env, check=2)  # fmt: skip
    assert "already in the catalogue" in again.stderr


def test_an_image_that_fails_its_selftest_is_not_tagged(lab_ws, lab_env, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), tmp_path / "identity.onnx")
    proc = evc(
        "model", "build", "notyolo", "--runtime", "yolo-onnx", "--version", "1",
        "--weights", tmp_path / "identity.onnx", env=lab_env, check=1, timeout=900,
    )  # fmt: skip
    assert "selftest failed" in proc.stderr and "nothing was tagged" in proc.stderr
    assert "Traceback" not in proc.stderr
    labelled = docker_client().images.list(all=True, filters={"label": "evc.model.name=notyolo"})
    assert labelled == [], "the failed image was left behind"
    evc("model", "show", "notyolo:1", env=lab_env, check=2)  # no catalogue row


def test_list_flags_what_the_registry_lost_and_delete_cleans_up(lab_ws, lab_env):
    models = {m["ref"]: m for m in _json("model", "list", env=lab_env)}
    assert models["faces:1.0"]["in_registry"] is True and models["yolo:0.1"]["in_registry"]
    api = registry.api(lab_ws)
    assert api.delete("evc/yolo", "0.1-amd64")  # behind EVC's back
    models = {m["ref"]: m for m in _json("model", "list", env=lab_env)}
    assert models["yolo:0.1"]["in_registry"] is False
    assert "MISSING" in evc("model", "list", env=lab_env, check=0).stdout

    _json("model", "delete", "faces:1.0", env=lab_env)
    assert "1.0-amd64" not in api.tags("evc/faces")
    assert "faces:1.0" not in {m["ref"] for m in _json("model", "list", env=lab_env)}
    ours = f"{registry.load(lab_ws).address}/evc/faces:"  # other labs share this engine
    assert not [t for _, tags in list_images(docker_client()) for t in tags if t.startswith(ours)]


def test_push_with_the_registry_down_changes_nothing(lab_ws, lab_env):
    build = ["model", "build", "faces", "--runtime", "face-haar", "--version", "2.0"]
    _json(*build, env=lab_env)
    client = docker_client()
    client.containers.get(registry_server.container_name(lab_ws)).stop(timeout=5)
    try:
        proc = evc("model", "push", "faces:2.0", env=lab_env, check=1)
        assert "does not answer" in proc.stderr and "Traceback" not in proc.stderr
        shown = _json("model", "show", "faces:2.0", env=lab_env)
        assert shown["registry_digest"] is None and shown["pushed_at"] is None
    finally:
        evc("registry", "up", env=lab_env, check=0)
    _json("model", "delete", "faces:2.0", env=lab_env)
